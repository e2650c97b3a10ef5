//! Group commit for metric samples: concurrent ingests of a few samples each are written by one
//! statement, so that a fleet posting one sample per device per minute costs one commit per
//! batch of requests instead of one per request.
//!
//! Each request hands its rows to [`SampleQueue::write`] and waits. One task per [`crate::Db`]
//! takes every request queued at that moment (up to [`GROUP_ROWS`] rows), writes them with one
//! `INSERT … ON CONFLICT DO NOTHING`, and answers each request with how many of *its* rows were
//! new, after the statement committed: a 2xx still means stored. A group that fails (a device deleted meanwhile fails its foreign key, say) is written
//! again one request at a time, so each request gets its own answer or error and no request
//! fails for another's row.

use std::collections::HashSet;

use tokio::sync::{mpsc, oneshot};

use herd_domain::monitoring::Reading;

use crate::{classify, Pools, StoreError};

/// The most rows one group writes (7 parameters a row on SQLite, well under its 32,766 limit).
pub(crate) const GROUP_ROWS: usize = 1000;

/// Requests with more rows than this are written on their own (they are a batch already).
pub(crate) const GROUPED_AT_MOST: usize = 100;

struct Job {
    device: String,
    tenant: String,
    readings: Vec<Reading>,
    done: oneshot::Sender<Result<u64, StoreError>>,
}

/// The queue of one database's sample writes; the writing task ends when the last
/// [`crate::Db`] handle is dropped.
#[derive(Debug, Clone)]
pub(crate) struct SampleQueue {
    jobs: mpsc::UnboundedSender<Job>,
}

impl std::fmt::Debug for Job {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Job").field("device", &self.device).field("rows", &self.readings.len()).finish()
    }
}

impl SampleQueue {
    /// Starts the writing task on `pools` (needs a tokio runtime).
    pub(crate) fn start(pools: Pools) -> SampleQueue {
        let (jobs, queue) = mpsc::unbounded_channel();
        tokio::spawn(run(pools, queue));
        SampleQueue { jobs }
    }

    /// Writes `readings` of `device` in the next group; answers how many were new, once they
    /// are committed.
    pub(crate) async fn write(&self, device: &str, tenant: &str, readings: &[Reading]) -> Result<u64, StoreError> {
        let (done, answer) = oneshot::channel();
        let job = Job { device: device.to_string(), tenant: tenant.to_string(), readings: readings.to_vec(), done };
        self.jobs.send(job).map_err(|_| closed())?;
        answer.await.map_err(|_| closed())?
    }
}

fn closed() -> StoreError {
    StoreError::Other(sqlx::Error::PoolClosed)
}

async fn run(pools: Pools, mut queue: mpsc::UnboundedReceiver<Job>) {
    let mut group: Vec<Job> = Vec::new();
    // A job that did not fit the previous group opens the next one.
    let mut held: Option<Job> = None;
    loop {
        let first = match held.take() {
            Some(job) => job,
            None => match queue.recv().await {
                Some(job) => job,
                None => return,
            },
        };
        let mut rows = first.readings.len();
        group.push(first);
        while let Ok(job) = queue.try_recv() {
            if rows + job.readings.len() > GROUP_ROWS {
                held = Some(job);
                break;
            }
            rows += job.readings.len();
            group.push(job);
        }
        write_group(&pools, std::mem::take(&mut group)).await;
    }
}

/// Writes one group and answers its requests.
async fn write_group(pools: &Pools, group: Vec<Job>) {
    match insert(pools, &group).await {
        Ok(counts) => {
            for (job, new) in group.into_iter().zip(counts) {
                let _ = job.done.send(Ok(new));
            }
        }
        Err(error) if group.len() == 1 => {
            if let Some(job) = group.into_iter().next() {
                let _ = job.done.send(Err(error));
            }
        }
        Err(_) => {
            // One request's rows failed the statement: each is written (and answered) alone.
            for job in group {
                let result = insert(pools, std::slice::from_ref(&job)).await;
                let _ = job.done.send(result.map(|counts| counts.first().copied().unwrap_or(0)));
            }
        }
    }
}

/// How many rows of each job are in `new`; a row sent twice counts for the first job only.
fn count_new(jobs: &[Job], mut new: HashSet<(String, i64)>) -> Vec<u64> {
    jobs.iter()
        .map(|job| job.readings.iter().filter(|r| new.remove(&(job.device.clone(), r.recorded_at))).count() as u64)
        .collect()
}

/// One statement for every row of `jobs`; answers how many rows of each job were new.
///
/// PostgreSQL answers them with `RETURNING` (the rows arrive in one response). SQLite hands
/// every returned row across a thread to the async side (measured: about 60 µs a row), so there
/// the insert returns only its count: inside one transaction of the one writer, a count equal
/// to the rows sent means every row was new; otherwise (a retry re-sent samples) the insert is
/// rolled back and done again after reading which of the rows exist already.
async fn insert(pools: &Pools, jobs: &[Job]) -> Result<Vec<u64>, StoreError> {
    let rows: Vec<(&Job, &Reading)> = jobs.iter().flat_map(|job| job.readings.iter().map(move |r| (job, r))).collect();
    match pools {
        Pools::Sqlite { writer, .. } => {
            let keys = || rows.iter().map(|(job, r)| (job.device.clone(), r.recorded_at));
            let insert_sql = sqlite_values_sql(
                "INSERT INTO metric_samples (device_id, tenant_id, recorded_at, cpu, ram, storage, temperature) VALUES ",
                7,
                rows.len(),
                " ON CONFLICT DO NOTHING",
            );
            let insert = || {
                let mut query = sqlx::query(&insert_sql);
                for (job, r) in &rows {
                    query = query
                        .bind(&job.device)
                        .bind(&job.tenant)
                        .bind(r.recorded_at)
                        .bind(r.cpu)
                        .bind(r.ram)
                        .bind(r.storage)
                        .bind(r.temperature);
                }
                query
            };
            if jobs.len() == 1 {
                // Alone, the count is the answer: one statement, committed on its own.
                return Ok(vec![insert().execute(writer).await.map_err(classify)?.rows_affected()]);
            }
            let mut tx = writer.begin().await.map_err(classify)?;
            let written = insert().execute(&mut *tx).await.map_err(classify)?.rows_affected();
            if written == rows.len() as u64 {
                tx.commit().await.map_err(classify)?;
                return Ok(jobs.iter().map(|job| job.readings.len() as u64).collect());
            }
            tx.rollback().await.map_err(classify)?;
            let mut tx = writer.begin().await.map_err(classify)?;
            let existing_sql = sqlite_values_sql(
                "SELECT device_id, recorded_at FROM metric_samples WHERE (device_id, recorded_at) IN (VALUES ",
                2,
                rows.len(),
                ")",
            );
            let mut existing = sqlx::query_as::<_, (String, i64)>(&existing_sql);
            for (job, r) in &rows {
                existing = existing.bind(&job.device).bind(r.recorded_at);
            }
            let existing: HashSet<(String, i64)> =
                existing.fetch_all(&mut *tx).await.map_err(classify)?.into_iter().collect();
            insert().execute(&mut *tx).await.map_err(classify)?;
            tx.commit().await.map_err(classify)?;
            Ok(count_new(jobs, keys().filter(|key| !existing.contains(key)).collect()))
        }
        Pools::Postgres(pool) => {
            const SQL: &str =
                "INSERT INTO metric_samples (device_id, tenant_id, recorded_at, cpu, ram, storage, temperature) \
                SELECT * FROM UNNEST($1::TEXT[], $2::TEXT[], $3::BIGINT[], $4::DOUBLE PRECISION[], \
                $5::DOUBLE PRECISION[], $6::DOUBLE PRECISION[], $7::DOUBLE PRECISION[]) \
                ON CONFLICT DO NOTHING RETURNING device_id, recorded_at";
            let written: Vec<(String, i64)> = sqlx::query_as(SQL)
                .bind(rows.iter().map(|(job, _)| job.device.as_str()).collect::<Vec<&str>>())
                .bind(rows.iter().map(|(job, _)| job.tenant.as_str()).collect::<Vec<&str>>())
                .bind(rows.iter().map(|(_, r)| r.recorded_at).collect::<Vec<i64>>())
                .bind(rows.iter().map(|(_, r)| r.cpu).collect::<Vec<f64>>())
                .bind(rows.iter().map(|(_, r)| r.ram).collect::<Vec<f64>>())
                .bind(rows.iter().map(|(_, r)| r.storage).collect::<Vec<f64>>())
                .bind(rows.iter().map(|(_, r)| r.temperature).collect::<Vec<Option<f64>>>())
                .fetch_all(pool)
                .await
                .map_err(classify)?;
            Ok(count_new(jobs, written.into_iter().collect()))
        }
    }
}

/// `head` then `rows` tuples of `width` placeholders, then `tail`. Anonymous `?`, bound in
/// order: sqlx binds a parameter by asking SQLite its name, which SQLite finds by a linear walk
/// of the statement's names, so thousands of numbered `$N` cost time quadratic in their number
/// (measured: a group of 1,000 rows wrote ~8,000 samples/s with `$N`).
pub(crate) fn sqlite_values_sql(head: &str, width: usize, rows: usize, tail: &str) -> String {
    let tuple = format!("({})", vec!["?"; width].join(", "));
    let mut sql = String::with_capacity(head.len() + tail.len() + rows * (tuple.len() + 2));
    sql.push_str(head);
    for i in 0..rows {
        if i > 0 {
            sql.push_str(", ");
        }
        sql.push_str(&tuple);
    }
    sql.push_str(tail);
    sql
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reading(recorded_at: i64) -> Reading {
        Reading { recorded_at, cpu: 1.0, ram: 2.0, storage: 3.0, temperature: None }
    }

    fn job(device: &str, tenant: &str, times: &[i64]) -> (Job, oneshot::Receiver<Result<u64, StoreError>>) {
        let (done, answer) = oneshot::channel();
        let readings = times.iter().copied().map(reading).collect();
        (Job { device: device.into(), tenant: tenant.into(), readings, done }, answer)
    }

    /// A group with a row that fails the statement (its device does not exist) is written again
    /// request by request: the other requests are stored and answered, only that one fails; and
    /// a row sent by two requests of one group counts for the first only.
    #[tokio::test]
    async fn a_failing_row_fails_only_its_own_request() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("herd.db").display());
        let (db, _system) = crate::Db::open(&url).await.unwrap();
        db.migrate().await.unwrap();
        let crate::Pools::Sqlite { writer, .. } = &db.pools else { unreachable!("an SQLite url") };
        sqlx::query("INSERT INTO tenants (id, name, created_at) VALUES ('t', 't', 0)").execute(writer).await.unwrap();
        sqlx::query("INSERT INTO devices (id, tenant_id, name, created_at, updated_at) VALUES ('d', 't', 'd', 0, 0)")
            .execute(writer)
            .await
            .unwrap();

        let (first, first_answer) = job("d", "t", &[1, 2]);
        let (again, again_answer) = job("d", "t", &[2, 3]);
        write_group(&db.pools, vec![first, again]).await;
        assert_eq!(first_answer.await.unwrap().unwrap(), 2);
        assert_eq!(again_answer.await.unwrap().unwrap(), 1, "the row both sent counts for the first");

        let (kept, kept_answer) = job("d", "t", &[4]);
        let (gone, gone_answer) = job("no-such-device", "t", &[4]);
        write_group(&db.pools, vec![kept, gone]).await;
        assert_eq!(kept_answer.await.unwrap().unwrap(), 1);
        assert!(gone_answer.await.unwrap().is_err(), "the missing device's request fails");
        let stored: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM metric_samples").fetch_one(writer).await.unwrap();
        assert_eq!(stored, 4);
    }
}
