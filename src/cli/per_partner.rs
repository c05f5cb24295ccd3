//! Commands that act on many partners at once (`rotate`, `partners purge`): the `--partner`
//! flag and a fan-out bounded like the service's own rotation.

use std::future::Future;
use std::sync::Arc;

use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use samvault::domain::TenantId;

/// The `--partner` flag's tenant id.
pub fn parse_partner(tenant: &str) -> anyhow::Result<TenantId> {
    TenantId::parse(tenant).map_err(|e| anyhow::anyhow!("--partner: {e}"))
}

/// Runs `work` for every tenant, at most `concurrency` at a time; each task yields its tenant
/// and result, in the order they finish.
pub fn spawn_each<T, Work, Fut>(
    tenants: Vec<TenantId>,
    concurrency: usize,
    work: Work,
) -> JoinSet<(TenantId, T)>
where
    Work: Fn(TenantId) -> Fut,
    Fut: Future<Output = T> + Send + 'static,
    T: Send + 'static,
{
    let permits = Arc::new(Semaphore::new(concurrency));
    let mut set = JoinSet::new();
    for tenant in tenants {
        let permits = permits.clone();
        // Futures are lazy: the work starts once the task holds a permit.
        let task = work(tenant.clone());
        set.spawn(async move {
            let _permit = permits.acquire_owned().await.expect("semaphore open");
            (tenant, task.await)
        });
    }
    set
}
