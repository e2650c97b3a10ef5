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
    use std::time::Duration;

    type Writing = std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>;
    type Write = Box<dyn Fn(Vec<Pending<u32, u32>>) -> Writing + Send + Sync>;

    /// A test write: reports each group's jobs on `groups`, waits for `release`, then answers
    /// every job with its number plus one.
    fn gated_write(
        groups: tokio::sync::mpsc::UnboundedSender<Vec<u32>>,
        release: tokio::sync::watch::Receiver<bool>,
    ) -> Write {
        Box::new(move |jobs: Vec<Pending<u32, u32>>| {
            let (groups, mut release) = (groups.clone(), release.clone());
            Box::pin(async move {
                let _ = groups.send(jobs.iter().map(|pending| pending.job).collect());
                let _ = release.wait_for(|go| *go).await;
                for pending in jobs {
                    let n = pending.job;
                    pending.answer(Ok(n + 1));
                }
            })
        })
    }

    async fn queued_reaches(group: &Group<u32, u32>, n: usize) {
        while group.queued.lock().unwrap().len() < n {
            tokio::task::yield_now().await;
        }
    }

    /// Jobs queued while a group is being written are taken by the next leaders, at most
    /// `limit` at a time, and every job gets its own answer.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn jobs_queued_behind_a_group_are_written_in_groups_of_at_most_the_limit() {
        let group: Arc<Group<u32, u32>> = Arc::new(Group::new(16));
        let (groups_tx, mut groups) = tokio::sync::mpsc::unbounded_channel();
        let (release, released) = tokio::sync::watch::channel(false);
        let write = Arc::new(gated_write(groups_tx, released));
        let submit = |n: u32| {
            let (group, write) = (Arc::clone(&group), Arc::clone(&write));
            tokio::spawn(async move { group.submit(n, |jobs| write(jobs)).await })
        };
        // Job 0 leads a group of its own and is held in its write...
        let first = submit(0);
        assert_eq!(groups.recv().await.unwrap(), vec![0]);
        // ...while 199 more queue behind it.
        let rest: Vec<_> = (1..200).map(submit).collect();
        tokio::time::timeout(Duration::from_secs(10), queued_reaches(&group, 199)).await.expect("all queued");
        release.send(true).unwrap();

        assert_eq!(first.await.unwrap().unwrap(), 1);
        for (n, request) in (1..200u32).zip(rest) {
            assert_eq!(request.await.unwrap().unwrap(), n + 1);
        }
        let mut sizes = Vec::new();
        while let Ok(jobs) = groups.try_recv() {
            sizes.push(jobs.len());
        }
        // 199 = 12 × 16 + 7: thirteen groups, none above the limit.
        assert_eq!(sizes.len(), 13, "group sizes: {sizes:?}");
        assert!(sizes.iter().all(|&size| size <= 16), "group sizes: {sizes:?}");
        assert_eq!(sizes.iter().sum::<usize>(), 199);
    }

    /// A leader whose request is dropped mid-write still answers the rest of its group, and no
    /// second group starts beside the first while it is written.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_cancelled_leader_does_not_abandon_its_group() {
        let group: Arc<Group<u32, u32>> = Arc::new(Group::new(16));
        let (groups_tx, mut groups) = tokio::sync::mpsc::unbounded_channel();
        let (release, released) = tokio::sync::watch::channel(false);
        let write = Arc::new(gated_write(groups_tx, released));
        let writes = Arc::new(AtomicUsize::new(0));
        let submit = |n: u32| {
            let (group, write, writes) = (Arc::clone(&group), Arc::clone(&write), Arc::clone(&writes));
            tokio::spawn(async move {
                group
                    .submit(n, |jobs| {
                        writes.fetch_add(1, Ordering::SeqCst);
                        write(jobs)
                    })
                    .await
            })
        };
        // The first request leads a group of one and is held in the write.
        let leader = submit(1);
        assert_eq!(groups.recv().await.unwrap(), vec![1]);
        // The second queues behind it; then the first request goes away, mid-write.
        let follower = submit(2);
        tokio::time::timeout(Duration::from_secs(10), queued_reaches(&group, 1)).await.expect("queued");
        leader.abort();
        assert!(leader.await.unwrap_err().is_cancelled());
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert_eq!(writes.load(Ordering::SeqCst), 1, "a second group started beside the first");

        release.send(true).unwrap();
        let answer = tokio::time::timeout(Duration::from_secs(5), follower).await;
        assert_eq!(answer.expect("the follower was answered").unwrap().unwrap(), 3);
        assert_eq!(groups.recv().await.unwrap(), vec![2], "the follower was written in a group of its own");
    }
}
