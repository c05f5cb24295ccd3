//! Ops users' passwords: argon2id (OWASP's minimum: 19 MiB, 2 passes, 1 lane) in PHC strings.

use argon2::password_hash::{PasswordHash, PasswordHasher, SaltString};
use argon2::{Algorithm, Argon2, Block, Params, Version};

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
    static DUMMY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    let dummy = DUMMY.get_or_init(|| hash("samvault-dummy-password"));
    let Ok(parsed) = PasswordHash::new(stored.unwrap_or(dummy)) else {
        return false;
    };
    matches(password.as_bytes(), &parsed) && stored.is_some()
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

type Job = Box<dyn FnOnce() + Send>;

/// Runs `work` (argon2) on one of [`ARGON2_THREADS`] dedicated threads, queued in order.
/// Each run takes 19 MiB and anyone can start one by failing to sign in: a small fixed pool
/// bounds the memory (glibc keeps a freed block in the arena of the thread that used it, and
/// tokio's blocking pool has up to 512 threads) and the CPU an anonymous client can cost.
pub async fn run<T: Send + 'static>(work: impl FnOnce() -> T + Send + 'static) -> T {
    static QUEUE: std::sync::OnceLock<std::sync::mpsc::Sender<Job>> = std::sync::OnceLock::new();
    let queue = QUEUE.get_or_init(|| {
        let (sender, receiver) = std::sync::mpsc::channel::<Job>();
        let receiver = std::sync::Arc::new(std::sync::Mutex::new(receiver));
        for i in 0..ARGON2_THREADS {
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
        sender
    });
    let (done, result) = tokio::sync::oneshot::channel();
    queue
        .send(Box::new(move || {
            let _ = done.send(work());
        }))
        .expect("the argon2 threads live as long as the process");
    result.await.expect("an argon2 job always answers")
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
}
