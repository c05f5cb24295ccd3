//! Ops users' passwords: argon2id (OWASP's minimum: 19 MiB, 2 passes, 1 lane) in PHC strings.

use argon2::password_hash::{PasswordHash, PasswordHasher, SaltString};
use argon2::{Algorithm, Argon2, Block, Params, Version};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Shortest password an ops user may choose.
pub const MIN_LEN: usize = 12;

fn argon2() -> Argon2<'static> {
    Argon2::new(
        Algorithm::Argon2id,
        Version::V0x13,
        Params::new(19 * 1024, 2, 1, None).expect("valid argon2 parameters"),
    )
}

/// The PHC string to store.
pub fn hash(password: &str) -> String {
    let salt = SaltString::generate(&mut rand08::rngs::OsRng);
    argon2()
        .hash_password(password.as_bytes(), &salt)
        .expect("argon2 hashing with valid parameters")
        .to_string()
}

/// Whether `password` matches `stored`. Without a stored hash (unknown user) a dummy hash is
/// checked anyway, so the answer takes as long whether or not the user exists.
pub fn verify(password: &str, stored: Option<&str>) -> bool {
    let Ok(parsed) = PasswordHash::new(stored.unwrap_or(dummy_hash())) else {
        return false;
    };
    matches(password.as_bytes(), &parsed) && stored.is_some()
}

/// The hash of a password nobody has, with the service's parameters.
fn dummy_hash() -> &'static str {
    static DUMMY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    DUMMY.get_or_init(|| hash("samvault-dummy-password"))
}

/// Most argon2 memory a stored hash may ask for (64 MiB): a hash written into the database
/// by someone else must not make a sign-in allocate gigabytes.
const MAX_BLOCKS: usize = 64 * 1024;

/// Recomputes `parsed` for `password` in this thread's own argon2 memory, allocated once and
/// reused: sign-ins (anyone can attempt one) then never allocate, so they cannot fragment or
/// grow the heap.
fn matches(password: &[u8], parsed: &PasswordHash<'_>) -> bool {
    thread_local! {
        static MEMORY: std::cell::RefCell<Vec<Block>> = const { std::cell::RefCell::new(Vec::new()) };
    }
    let (Some(salt), Some(expected)) = (parsed.salt, parsed.hash) else {
        return false;
    };
    let (Ok(algorithm), Ok(params)) = (
        Algorithm::try_from(parsed.algorithm),
        Params::try_from(parsed),
    ) else {
        return false;
    };
    let Ok(version) = parsed.version.map_or(Ok(Version::V0x13), Version::try_from) else {
        return false;
    };
    let blocks = params.block_count();
    let mut salt_bytes = [0u8; 64];
    let Ok(salt) = salt.decode_b64(&mut salt_bytes) else {
        return false;
    };
    if blocks > MAX_BLOCKS {
        return false;
    }
    let mut out = zeroize::Zeroizing::new(vec![0u8; expected.len()]);
    let computed = MEMORY.with_borrow_mut(|memory| {
        if memory.len() < blocks {
            memory.resize(blocks, Block::default());
        }
        Argon2::new(algorithm, version, params)
            .hash_password_into_with_memory(password, salt, &mut out, &mut memory[..blocks])
            .is_ok()
    });
    computed
        && bool::from(subtle::ConstantTimeEq::ct_eq(
            out.as_slice(),
            expected.as_bytes(),
        ))
}

/// Threads that run argon2 for the service (sign-ins, password changes).
const ARGON2_THREADS: usize = 2;
/// Checks that may wait for a thread. At some 40 ms a check on 2 threads, the last one admitted
/// waits about 200 ms; past that the service answers 503 instead of queueing without end.
const ARGON2_QUEUE: usize = 8;
/// What a check is assumed to take until one has been timed.
const ASSUMED_CHECK: Duration = Duration::from_millis(50);

type Job = Box<dyn FnOnce() + Send>;

/// No argon2 thread will be free soon: come back after `retry_after`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Busy {
    pub retry_after: Duration,
}

/// A fixed set of threads for argon2 with a bounded queue in front. Each check takes 19 MiB
/// and anyone can start one by failing to sign in: a small fixed pool bounds the memory (glibc
/// keeps a freed block in the arena of the thread that used it, and tokio's blocking pool has
/// up to 512 threads) and the CPU an anonymous client can cost; the bounded queue bounds the
/// wait of whoever comes next.
pub struct Pool {
    jobs: std::sync::mpsc::Sender<Job>,
    /// One permit per running or waiting job.
    slots: Arc<tokio::sync::Semaphore>,
    threads: usize,
    capacity: usize,
    /// Recent time from admission to answer of a sign-in check, in microseconds (0: none yet).
    recent_micros: AtomicU64,
}

/// A place in the [`Pool`]'s queue, held until its job has run.
pub struct Slot<'a> {
    pool: &'a Pool,
    permit: tokio::sync::OwnedSemaphorePermit,
}

impl Pool {
    pub fn new(threads: usize, queue: usize) -> Pool {
        let (sender, receiver) = std::sync::mpsc::channel::<Job>();
        let receiver = Arc::new(std::sync::Mutex::new(receiver));
        for i in 0..threads {
            let receiver = receiver.clone();
            std::thread::Builder::new()
                .name(format!("argon2-{i}"))
                .spawn(move || {
                    loop {
                        let job = receiver.lock().unwrap_or_else(|e| e.into_inner()).recv();
                        match job {
                            Ok(job) => job(),
                            Err(_) => return,
                        }
                    }
                })
                .expect("spawning an argon2 thread");
        }
        Pool {
            jobs: sender,
            slots: Arc::new(tokio::sync::Semaphore::new(threads + queue)),
            threads,
            capacity: threads + queue,
            recent_micros: AtomicU64::new(0),
        }
    }

    /// A place in the queue, or [`Busy`] at once when it is full.
    pub fn admit(&self) -> Result<Slot<'_>, Busy> {
        match self.slots.clone().try_acquire_owned() {
            Ok(permit) => Ok(Slot { pool: self, permit }),
            Err(_) => Err(Busy {
                retry_after: self
                    .drain_time()
                    .clamp(Duration::from_secs(1), Duration::from_secs(30)),
            }),
        }
    }

    /// What a sign-in check takes these days, wait included.
    pub fn recent_check(&self) -> Duration {
        match self.recent_micros.load(Ordering::Relaxed) {
            0 => ASSUMED_CHECK,
            micros => Duration::from_micros(micros),
        }
    }

    /// How long a full queue takes to run.
    fn drain_time(&self) -> Duration {
        let per_thread = self.capacity.div_ceil(self.threads.max(1));
        self.recent_check() * u32::try_from(per_thread).unwrap_or(u32::MAX)
    }

    fn record_check(&self, took: Duration) {
        let micros = took.as_micros().clamp(1, u128::from(u32::MAX)) as u64;
        // An average over the last few checks: one slow check does not set the pace.
        let _ = self
            .recent_micros
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |old| {
                Some(if old == 0 {
                    micros
                } else {
                    (old * 7 + micros) / 8
                })
            });
    }
}

impl Slot<'_> {
    /// Runs `work` (argon2) on one of the pool's threads, in the order admitted.
    pub async fn run<T: Send + 'static>(self, work: impl FnOnce() -> T + Send + 'static) -> T {
        let (done, result) = tokio::sync::oneshot::channel();
        let permit = self.permit;
        self.pool
            .jobs
            .send(Box::new(move || {
                let result = work();
                // The place is given back when the work is done, even if nobody waits for it.
                drop(permit);
                let _ = done.send(result);
            }))
            .expect("the argon2 threads live as long as the pool");
        result.await.expect("an argon2 job always answers")
    }

    /// Checks a sign-in's password against `stored`; the time it takes, wait included, is what
    /// [`imitate_check`] spends for a name that is no user.
    pub async fn check(self, presented: zeroize::Zeroizing<String>, stored: String) -> bool {
        let (pool, started) = (self.pool, Instant::now());
        let matched = self
            .run(move || verify(&presented, Some(stored.as_str())))
            .await;
        pool.record_check(started.elapsed());
        matched
    }
}

/// The service's argon2 pool.
pub fn pool() -> &'static Pool {
    static POOL: std::sync::OnceLock<Pool> = std::sync::OnceLock::new();
    POOL.get_or_init(|| Pool::new(ARGON2_THREADS, ARGON2_QUEUE))
}

/// A place in the service's argon2 queue, or [`Busy`].
pub fn admit() -> Result<Slot<'static>, Busy> {
    pool().admit()
}

/// Answers a sign-in for a name that is no user as late as a check of a real user's password
/// would, without computing one: a flood of such sign-ins costs no argon2 time and leaves the
/// queue to real users, and the name's existence does not show in the time taken.
pub async fn imitate_check() {
    tokio::time::sleep(pool().recent_check()).await;
}

/// Times one check of a password nobody has (at start-up), so [`imitate_check`] waits as long
/// as a real check from the first sign-in on.
pub async fn calibrate() {
    if let Ok(slot) = admit() {
        let _ = slot
            .check(zeroize::Zeroizing::default(), dummy_hash().to_string())
            .await;
    }
}

/// Why a new password is refused, if it is.
pub fn check_new(password: &str, username: &str) -> Result<(), &'static str> {
    if password.chars().count() < MIN_LEN {
        return Err("the password must have at least 12 characters");
    }
    if password.chars().count() > 256 {
        return Err("the password must have at most 256 characters");
    }
    if password.to_lowercase().contains(&username.to_lowercase()) {
        return Err("the password must not contain the user name");
    }
    Ok(())
}

/// A random initial password (shown once; the user must change it at first sign-in).
pub fn generate() -> zeroize::Zeroizing<String> {
    use rand::RngCore;
    let mut bytes = [0u8; 15];
    rand::rng().fill_bytes(&mut bytes);
    zeroize::Zeroizing::new(base64::Engine::encode(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD,
        bytes,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_are_argon2id_salted_and_verify() {
        let a = hash("correct horse battery");
        let b = hash("correct horse battery");
        assert!(a.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "{a}");
        assert_ne!(a, b, "salted");
        assert!(verify("correct horse battery", Some(&a)));
        assert!(!verify("correct horse battery!", Some(&a)));
        assert!(!verify("correct horse battery", None), "no user, no match");
        assert!(!verify("x", Some("not a phc string")));
    }

    #[test]
    fn verification_agrees_with_the_argon2_crate_and_refuses_oversized_costs() {
        use argon2::password_hash::PasswordVerifier;
        let stored = hash("correct horse battery");
        let parsed = PasswordHash::new(&stored).unwrap();
        for attempt in ["correct horse battery", "correct horse batterY", ""] {
            assert_eq!(
                matches(attempt.as_bytes(), &parsed),
                argon2()
                    .verify_password(attempt.as_bytes(), &parsed)
                    .is_ok(),
                "{attempt:?}"
            );
        }
        // The same thread's memory is reused; a second check still answers right.
        assert!(matches(b"correct horse battery", &parsed));
        // A hash asking for 1 GiB is refused, not computed.
        let huge = stored.replace("m=19456", "m=1048576");
        assert!(!verify("correct horse battery", Some(&huge)));
    }

    #[test]
    fn new_passwords_are_checked() {
        assert!(check_new("short", "alice").is_err());
        assert!(check_new("my-alice-password-1", "alice").is_err());
        assert!(check_new("a long enough passphrase", "alice").is_ok());
        assert_eq!(generate().len(), 20);
    }

    #[tokio::test]
    async fn a_full_queue_refuses_at_once_and_admits_again_when_a_job_is_done() {
        let pool: &'static Pool = Box::leak(Box::new(Pool::new(1, 1)));
        let (release, wait) = std::sync::mpsc::channel::<()>();
        let wait = Arc::new(std::sync::Mutex::new(wait));
        let blocking = |slot: Slot<'static>| {
            let wait = wait.clone();
            tokio::spawn(slot.run(move || wait.lock().unwrap().recv().unwrap()))
        };
        // One job runs on the only thread, one waits: the pool is full.
        let first = blocking(pool.admit().expect("the thread"));
        let second = blocking(pool.admit().expect("the queue's place"));
        let busy = pool.admit().err().expect("full");
        assert!(
            (Duration::from_secs(1)..=Duration::from_secs(30)).contains(&busy.retry_after),
            "{busy:?}"
        );
        release.send(()).unwrap();
        first.await.unwrap();
        let third = blocking(pool.admit().expect("a place again"));
        release.send(()).unwrap();
        release.send(()).unwrap();
        second.await.unwrap();
        third.await.unwrap();
    }
}
