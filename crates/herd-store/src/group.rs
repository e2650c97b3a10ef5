//! Group commit by a leader among the waiting requests: concurrent writers of the same kind are
//! answered by one transaction instead of one each.
//!
//! A request queues its job and then waits for either its answer or the leader's role. The
//! request that becomes leader takes every job queued at that moment (its own among them, unless
//! a previous leader took it), writes them in a task of their own and answers each; the requests
//! whose jobs it took are woken by their answers. Alone, a request leads a group of one at once,
//! so an idle server pays no waiting; under load a group forms while the previous one commits.
//!
//! The group is written by a spawned task that owns the leader's role until it ends: a leader
//! whose request is cancelled (the client went away) neither abandons the other jobs of its
//! group half-written nor lets a second group start beside its own.

use std::sync::{Arc, Mutex};

use tokio::sync::oneshot;

use crate::StoreError;

/// One queued job and where its answer goes.
pub(crate) struct Pending<J, A> {
    pub(crate) job: J,
    pub(crate) answer: oneshot::Sender<Result<A, StoreError>>,
}

impl<J, A> Pending<J, A> {
    /// Answers the job's request (gone requests are ignored: their jobs were still written).
    pub(crate) fn answer(self, result: Result<A, StoreError>) {
        let _ = self.answer.send(result);
    }
}

/// The queue and the leader's role for one kind of write on one [`crate::Db`].
pub(crate) struct Group<J, A> {
    queued: Mutex<Vec<Pending<J, A>>>,
    leader: Arc<tokio::sync::Mutex<()>>,
    /// The most jobs one group takes; the rest wait for the next leader.
    limit: usize,
}

impl<J, A> std::fmt::Debug for Group<J, A> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let queued = self.queued.lock().map(|q| q.len()).unwrap_or_default();
        f.debug_struct("Group").field("queued", &queued).field("limit", &self.limit).finish()
    }
}

impl<J: Send + 'static, A: Send + 'static> Group<J, A> {
    pub(crate) fn new(limit: usize) -> Self {
        Group { queued: Mutex::new(Vec::new()), leader: Arc::new(tokio::sync::Mutex::new(())), limit: limit.max(1) }
    }

    /// Queues `job` and waits until some group has written it. `write` is what a leader does
    /// with the jobs it takes: it must answer every one of them.
    pub(crate) async fn submit<W, F>(&self, job: J, write: W) -> Result<A, StoreError>
    where
        W: Fn(Vec<Pending<J, A>>) -> F,
        F: std::future::Future<Output = ()> + Send + 'static,
    {
        let (answer, mut answered) = oneshot::channel();
        self.queued.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).push(Pending { job, answer });
        loop {
            tokio::select! {
                biased;
                result = &mut answered => return result.unwrap_or_else(|_| Err(closed())),
                role = Arc::clone(&self.leader).lock_owned() => {
                    let jobs = {
                        let mut queued = self.queued.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
                        let take = queued.len().min(self.limit);
                        queued.drain(..take).collect::<Vec<_>>()
                    };
                    if jobs.is_empty() {
                        // A previous leader took this job; its answer is on the way.
                        drop(role);
                        return answered.await.unwrap_or_else(|_| Err(closed()));
                    }
                    let writing = write(jobs);
                    let task = tokio::spawn(async move {
                        writing.await;
                        drop(role);
                    });
                    // Not cancelled with this request: the task owns the group from here.
                    let _ = task.await;
                }
            }
        }
    }
}

fn closed() -> StoreError {
    StoreError::Other(sqlx::Error::PoolClosed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// Every job is answered with its own result, and concurrent jobs share groups.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_jobs_are_written_in_fewer_groups_and_each_gets_its_answer() {
        let group: Arc<Group<u32, u32>> = Arc::new(Group::new(16));
        let groups = Arc::new(AtomicUsize::new(0));
        let mut requests = Vec::new();
        for n in 0..200u32 {
            let group = Arc::clone(&group);
            let groups = Arc::clone(&groups);
            requests.push(tokio::spawn(async move {
                group
                    .submit(n, move |jobs| {
                        let groups = Arc::clone(&groups);
                        async move {
                            groups.fetch_add(1, Ordering::SeqCst);
                            assert!(jobs.len() <= 16, "a group took {} jobs", jobs.len());
                            tokio::time::sleep(std::time::Duration::from_millis(2)).await;
                            for pending in jobs {
                                let n = pending.job;
                                pending.answer(Ok(n * 2));
                            }
                        }
                    })
                    .await
            }));
        }
        for (n, request) in requests.into_iter().enumerate() {
            assert_eq!(request.await.unwrap().unwrap(), n as u32 * 2);
        }
        let groups = groups.load(Ordering::SeqCst);
        assert!(groups < 200, "200 concurrent jobs took {groups} groups: nothing was grouped");
    }

    /// A leader whose request is dropped mid-write still answers the rest of its group.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_cancelled_leader_does_not_abandon_its_group() {
        let group: Arc<Group<u32, u32>> = Arc::new(Group::new(16));
        let (release, released) = tokio::sync::watch::channel(false);
        let write = move |jobs: Vec<Pending<u32, u32>>| {
            let mut released = released.clone();
            async move {
                let _ = released.wait_for(|go| *go).await;
                for pending in jobs {
                    let n = pending.job;
                    pending.answer(Ok(n + 1));
                }
            }
        };
        // The first request leads a group of one and blocks in the write.
        let leader = {
            let group = Arc::clone(&group);
            let write = write.clone();
            tokio::spawn(async move { group.submit(1, write).await })
        };
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        // The second queues behind it; then the first request goes away.
        let follower = {
            let group = Arc::clone(&group);
            tokio::spawn(async move { group.submit(2, write).await })
        };
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        leader.abort();
        let _ = leader.await;
        release.send(true).unwrap();
        let answer = tokio::time::timeout(std::time::Duration::from_secs(5), follower).await;
        assert_eq!(answer.expect("the follower was answered").unwrap().unwrap(), 3);
    }
}
