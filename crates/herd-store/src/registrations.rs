//! Group commit of first registrations: every `POST /devices/auto-register` first tries to be
//! a new device here.
//!
//! Concurrent registrations share one transaction ([`crate::group`]): one multi-row insert,
//! one count of each enrollment token's uses, and the events as one outbox write. On
//! PostgreSQL that is one turn at the cluster-wide event-order lock for the whole group rather
//! than one per device (the lock capped registrations at ~900/s, ARCHITECTURE.md "What the
//! event-order lock costs"); on SQLite one turn of the writer for a handful of round trips.
//!
//! The insert only ever adds rows (`ON CONFLICT DO NOTHING`): a registration whose identifiers
//! a device of the tenant already has is skipped by the unique indexes, changes nothing, and
//! its caller takes the one-transaction path that finds that device and asks for proof. The
//! insert is the probe, so a first registration costs no read of its own. When a token has
//! fewer uses left than the group spends, the group is rolled back and every caller registers
//! alone, so each gets its own exact answer.

use herd_domain::ids::EnrollmentTokenId;

use crate::devices::{bind_new_device, DeviceRow, NewDevice, INSERT_COLUMNS};
use crate::group::{Group, Pending};
use crate::samples::sqlite_values_sql;
use crate::{classify, column, Db, StoreError, Tx, TxConn};

/// The most registrations one group writes (17 parameters a row on SQLite, well under its limit;
/// its events fit one outbox statement on PostgreSQL).
const REGISTRATION_GROUP: usize = 256;

/// A first registration waiting for its group.
pub(crate) struct Job {
    new: NewDevice,
    /// The enrollment token whose use the group counts (`None` when the caller reserved the use
    /// already, or a member registers).
    enrollment: Option<EnrollmentTokenId>,
}

/// The group commit of [`register`]: `Some(row)` when the group wrote the job's device.
pub(crate) type RegistrationGroup = Group<Job, Option<DeviceRow>>;

pub(crate) fn registration_group() -> RegistrationGroup {
    Group::new(REGISTRATION_GROUP)
}

/// Inserts `new` with its `DeviceRegistered` event, counting one use of `enrollment`, in a
/// group with concurrent registrations; committed before this answers `Some(row)`. `None`,
/// with nothing written for it, when a device has one of its identifiers or the group could
/// not count its uses: the caller registers alone.
pub(crate) async fn register(
    db: &Db,
    new: NewDevice,
    enrollment: Option<EnrollmentTokenId>,
) -> Result<Option<DeviceRow>, StoreError> {
    let group_db = db.clone();
    db.registrations.submit(Job { new, enrollment }, move |jobs| write(group_db.clone(), jobs)).await
}

async fn write(db: Db, jobs: Vec<Pending<Job, Option<DeviceRow>>>) {
    match insert_group(&db, &jobs).await {
        Ok(written) => {
            for (pending, written) in jobs.into_iter().zip(written) {
                let row = written.then(|| pending.job.new.row.clone());
                pending.answer(Ok(row));
            }
        }
        // The commit's outcome is unknown: registering again could find the group's own rows
        // and answer a claim, so every job gets the error, as a lone registration would.
        Err(error) => {
            let text = error.to_string();
            for pending in jobs {
                pending.answer(Err(StoreError::Other(sqlx::Error::Protocol(text.clone()))));
            }
        }
    }
}

/// Writes the group's new devices in one transaction: for each job, whether its device was
/// written. A job whose identifiers a device already has is not (the others are); none is if
/// a token has fewer uses left than the group spends or a statement before the commit failed
/// (then each job's caller, registering alone, meets that failure itself). Err only from the
/// commit.
async fn insert_group(db: &Db, jobs: &[Pending<Job, Option<DeviceRow>>]) -> Result<Vec<bool>, StoreError> {
    let (tx, written) = match write_in_tx(db, jobs).await {
        Ok(Some(group)) => group,
        Ok(None) => return Ok(vec![false; jobs.len()]),
        Err(error) => {
            tracing::debug!(%error, "a group of registrations failed before its commit; each registers alone");
            return Ok(vec![false; jobs.len()]);
        }
    };
    if written.iter().any(|w| *w) {
        tx.commit().await?;
    }
    Ok(written)
}

/// The group's statements: the transaction to commit and which jobs it wrote, or None (rolled
/// back) if a token has too few uses left.
async fn write_in_tx(db: &Db, jobs: &[Pending<Job, Option<DeviceRow>>]) -> Result<Option<(Tx, Vec<bool>)>, StoreError> {
    let news: Vec<&NewDevice> = jobs.iter().map(|pending| &pending.job.new).collect();
    let mut tx = db.begin().await?;
    // cache: untouched — new rows have no entries to kill (lookups that find nothing are not
    // kept), and a skipped row changes nothing.
    let inserted = match &mut tx.conn {
        TxConn::Sqlite(conn) => {
            let sql = sqlite_values_sql(
                &format!("INSERT INTO devices ({INSERT_COLUMNS}) VALUES "),
                17,
                news.len(),
                " ON CONFLICT DO NOTHING",
            );
            let mut query = sqlx::query(&sql);
            for new in &news {
                query = bind_new_device!(query, new);
            }
            query.execute(&mut **conn).await.map_err(classify)?.rows_affected()
        }
        TxConn::Postgres(conn) => sqlx::query(&format!(
            "INSERT INTO devices ({INSERT_COLUMNS}) SELECT * FROM UNNEST($1::TEXT[], $2::TEXT[], $3::TEXT[], \
                 $4::TEXT[], $5::TEXT[], $6::TEXT[], $7::TEXT[], $8::TEXT[], $9::TEXT[], $10::TEXT[], $11::TEXT[], \
                 $12::TEXT[], $13::TEXT[], $14::TEXT[], $15::BIGINT[], $16::BIGINT[], $17::TEXT[]) \
                 ON CONFLICT DO NOTHING"
        ))
        .bind(column(&news, |n| n.row.id.to_string()))
        .bind(column(&news, |n| n.tenant.to_string()))
        .bind(column(&news, |n| n.row.name.clone()))
        .bind(column(&news, |n| n.row.serial_number.clone()))
        .bind(column(&news, |n| n.row.mac_address.clone()))
        .bind(column(&news, |n| n.row.android_id.clone()))
        .bind(column(&news, |n| n.row.model.clone()))
        .bind(column(&news, |n| n.row.manufacturer.clone()))
        .bind(column(&news, |n| n.row.os_version.clone()))
        .bind(column(&news, |n| n.row.app_version.clone()))
        .bind(column(&news, |n| n.row.location.clone()))
        .bind(column(&news, |n| serde_json::to_string(&n.row.tags.0).unwrap_or_else(|_| "[]".into())))
        .bind(column(&news, |n| n.row.status.as_str().to_string()))
        .bind(column(&news, |n| n.token_hash.clone()))
        .bind(column(&news, |n| n.row.created_at))
        .bind(column(&news, |n| n.row.updated_at))
        .bind(column(&news, |n| n.public_key.clone()))
        .execute(&mut **conn)
        .await
        .map_err(classify)?
        .rows_affected(),
    };
    let written = if inserted == news.len() as u64 {
        vec![true; news.len()]
    } else {
        // Some rows were skipped (their identifiers are taken): which ones, by their fresh ids.
        let ids: Vec<String> = news.iter().map(|new| new.row.id.to_string()).collect();
        let present = existing_ids(&mut tx, &ids).await?;
        ids.iter().map(|id| present.contains(id)).collect()
    };
    let now = news.iter().map(|new| new.row.created_at).max().unwrap_or_default();
    let mut uses: Vec<(EnrollmentTokenId, i64)> = Vec::new();
    let spent = jobs.iter().zip(&written).filter(|(_, written)| **written);
    for token in spent.filter_map(|(pending, _)| pending.job.enrollment) {
        match uses.iter_mut().find(|(id, _)| *id == token) {
            Some((_, n)) => *n += 1,
            None => uses.push((token, 1)),
        }
    }
    for (token, n) in uses {
        if !crate::credentials::consume_enrollment_uses(&mut tx, token, n, now).await? {
            return Ok(None);
        }
    }
    for (new, _) in news.iter().zip(&written).filter(|(_, written)| **written) {
        tx.record(new.tenant, &new.registered_event(), new.row.created_at);
    }
    Ok(Some((tx, written)))
}

/// Which of `ids` are devices (as seen inside `tx`).
async fn existing_ids(tx: &mut Tx, ids: &[String]) -> Result<std::collections::HashSet<String>, StoreError> {
    let rows: Vec<(String,)> = match &mut tx.conn {
        TxConn::Sqlite(conn) => {
            let sql = sqlite_values_sql("SELECT id FROM devices WHERE id IN (VALUES ", 1, ids.len(), ")");
            let mut query = sqlx::query_as(&sql);
            for id in ids {
                query = query.bind(id);
            }
            query.fetch_all(&mut **conn).await
        }
        TxConn::Postgres(conn) => {
            sqlx::query_as("SELECT id FROM devices WHERE id = ANY($1::TEXT[])").bind(ids).fetch_all(&mut **conn).await
        }
    }
    .map_err(classify)?;
    Ok(rows.into_iter().map(|(id,)| id).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::{DeviceInfo, Identifiers};
    use crate::with_writer;
    use herd_domain::ids::TenantId;
    use tokio::sync::oneshot;

    type Answer = oneshot::Receiver<Result<Option<DeviceRow>, StoreError>>;

    fn job(tenant: TenantId, serial: &str, token: EnrollmentTokenId) -> (Pending<Job, Option<DeviceRow>>, Answer) {
        let ids = Identifiers { serial_number: Some(serial.into()), ..Identifiers::default() };
        let new = NewDevice::new(tenant, &ids, &DeviceInfo::default(), serial.into(), serial, None, 1);
        let (answer, answered) = oneshot::channel();
        (Pending { job: Job { new, enrollment: Some(token) }, answer }, answered)
    }

    #[tokio::test]
    async fn a_group_writes_its_new_devices_and_leaves_known_identifiers_alone_on_sqlite() {
        a_group_writes_its_new_devices_and_leaves_known_identifiers_alone(&crate::test_db::sqlite().await.db).await;
    }

    #[tokio::test]
    async fn a_group_writes_its_new_devices_and_leaves_known_identifiers_alone_on_postgres() {
        if let Some(test_db) = crate::test_db::postgres().await {
            a_group_writes_its_new_devices_and_leaves_known_identifiers_alone(&test_db.db).await;
        }
    }

    /// A group's jobs are answered one by one: a job whose serial a device has (before the
    /// group, or earlier in the same group) is not written and changes nothing, the others are
    /// written with one event and one token use each; a token with fewer uses left than the
    /// group needs writes nothing at all.
    async fn a_group_writes_its_new_devices_and_leaves_known_identifiers_alone(db: &Db) {
        let tenant = crate::test_db::tenant(db).await;
        let token = EnrollmentTokenId::new();
        let sql = "INSERT INTO enrollment_tokens (id, tenant_id, name, token_hash, max_uses, created_at) \
                   VALUES ($1, $2, 'e', 'h', 4, 0)";
        with_writer!(db, |pool| sqlx::query(sql).bind(token).bind(tenant).execute(pool).await.map(drop)).unwrap();
        let sql = "INSERT INTO devices (id, tenant_id, name, serial_number, token_hash, created_at, updated_at) \
                   VALUES ('known', $1, 'known', 'KNOWN', 'known', 0, 0)";
        with_writer!(db, |pool| sqlx::query(sql).bind(tenant).execute(pool).await.map(drop)).unwrap();
        let count = |sql: &'static str| async move {
            with_writer!(db, |pool| sqlx::query_scalar::<_, i64>(sql).fetch_one(pool).await).unwrap()
        };

        let jobs: Vec<_> = ["A", "KNOWN", "B", "B"].iter().map(|serial| job(tenant, serial, token)).collect();
        let (jobs, answers): (Vec<_>, Vec<_>) = jobs.into_iter().unzip();
        write(db.clone(), jobs).await;
        let mut written = Vec::new();
        for answer in answers {
            written.push(answer.await.unwrap().unwrap().map(|row| row.serial_number.unwrap()));
        }
        assert_eq!(written, [Some("A".to_string()), None, Some("B".to_string()), None]);
        assert_eq!(count("SELECT COUNT(*) FROM devices").await, 3);
        assert_eq!(count("SELECT COUNT(*) FROM devices WHERE id = 'known' AND name = 'known'").await, 1);
        assert_eq!(count("SELECT COUNT(*) FROM events WHERE type = 'device.registered'").await, 2);
        assert_eq!(count("SELECT uses FROM enrollment_tokens").await, 2);

        // Two uses left, three new devices: the group writes none of them.
        let (jobs, answers): (Vec<_>, Vec<_>) = ["C", "D", "E"].iter().map(|serial| job(tenant, serial, token)).unzip();
        write(db.clone(), jobs).await;
        for answer in answers {
            assert!(answer.await.unwrap().unwrap().is_none());
        }
        assert_eq!(count("SELECT COUNT(*) FROM devices").await, 3);
        assert_eq!(count("SELECT COUNT(*) FROM events").await, 2);
        assert_eq!(count("SELECT uses FROM enrollment_tokens").await, 2);

        // Two tenants in one group: identifiers are unique per tenant, so another tenant's
        // KNOWN is a new device there, and each tenant's events are numbered by its own counter.
        let other = crate::test_db::tenant(db).await;
        let (jobs, answers): (Vec<_>, Vec<_>) =
            [(other, "KNOWN"), (tenant, "F")].into_iter().map(|(t, serial)| job(t, serial, token)).unzip();
        write(db.clone(), jobs).await;
        for answer in answers {
            assert!(answer.await.unwrap().unwrap().is_some());
        }
        assert_eq!(count("SELECT COUNT(*) FROM devices WHERE serial_number = 'KNOWN'").await, 2);
        assert_eq!(count("SELECT MAX(tenant_seq) FROM events").await, 3, "tenant 0's third event");
        assert_eq!(count("SELECT MIN(tenant_seq) FROM events").await, 1);
        assert_eq!(count("SELECT uses FROM enrollment_tokens").await, 4);
    }

    async fn token_with_uses(db: &Db, tenant: TenantId, max_uses: i64) -> EnrollmentTokenId {
        let token = EnrollmentTokenId::new();
        let sql = "INSERT INTO enrollment_tokens (id, tenant_id, name, token_hash, max_uses, created_at) \
                   VALUES ($1, $2, 'e', $1, $3, 0)";
        with_writer!(db, |pool| sqlx::query(sql).bind(token).bind(tenant).bind(max_uses).execute(pool).await.map(drop))
            .unwrap();
        token
    }

    async fn count(db: &Db, sql: &str) -> i64 {
        with_writer!(db, |pool| sqlx::query_scalar::<_, i64>(sql).fetch_one(pool).await).unwrap()
    }

    #[tokio::test]
    async fn a_group_failing_before_its_commit_writes_nothing_and_sends_each_job_alone_on_sqlite() {
        a_group_failing_before_its_commit_writes_nothing_and_sends_each_job_alone(&crate::test_db::sqlite().await.db)
            .await;
    }

    #[tokio::test]
    async fn a_group_failing_before_its_commit_writes_nothing_and_sends_each_job_alone_on_postgres() {
        if let Some(test_db) = crate::test_db::postgres().await {
            a_group_failing_before_its_commit_writes_nothing_and_sends_each_job_alone(&test_db.db).await;
        }
    }

    /// A statement of the group fails (here the insert: one job names a tenant that does not
    /// exist): the transaction is dropped with nothing of any job in it, and every job is
    /// answered "not written", so each caller registers alone and meets its own outcome.
    async fn a_group_failing_before_its_commit_writes_nothing_and_sends_each_job_alone(db: &Db) {
        let tenant = crate::test_db::tenant(db).await;
        let token = token_with_uses(db, tenant, 10).await;
        let (jobs, answers): (Vec<_>, Vec<_>) = [(tenant, "G"), (TenantId::new(), "ORPHAN"), (tenant, "H")]
            .into_iter()
            .map(|(t, s)| job(t, s, token))
            .unzip();
        write(db.clone(), jobs).await;
        for answer in answers {
            assert!(answer.await.unwrap().unwrap().is_none(), "every job goes alone");
        }
        assert_eq!(count(db, "SELECT COUNT(*) FROM devices").await, 0);
        assert_eq!(count(db, "SELECT COUNT(*) FROM events").await, 0);
        assert_eq!(count(db, "SELECT uses FROM enrollment_tokens").await, 0);
    }

    /// The commit itself fails (a deferred constraint trigger, checked at commit, rejects one
    /// row; PostgreSQL only, SQLite has no deferred check a test can add to `devices`): every
    /// job is answered with the error, none with "not written", since a caller registering
    /// again after a commit whose outcome it cannot know could find the group's own row and
    /// answer a claim. Nothing of the group is stored.
    #[tokio::test]
    async fn a_group_whose_commit_fails_answers_every_job_with_the_error_on_postgres() {
        let Some(test_db) = crate::test_db::postgres().await else { return };
        let db = &test_db.db;
        let tenant = crate::test_db::tenant(db).await;
        let token = token_with_uses(db, tenant, 10).await;
        for sql in [
            "CREATE FUNCTION reject_doomed() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN \
             IF NEW.serial_number = 'DOOMED' THEN RAISE EXCEPTION 'doomed at commit'; END IF; RETURN NULL; END $$",
            "CREATE CONSTRAINT TRIGGER reject_doomed AFTER INSERT ON devices DEFERRABLE INITIALLY DEFERRED \
             FOR EACH ROW EXECUTE FUNCTION reject_doomed()",
        ] {
            with_writer!(db, |pool| sqlx::query(sql).execute(pool).await.map(drop)).unwrap();
        }
        let (jobs, answers): (Vec<_>, Vec<_>) =
            ["I", "DOOMED", "J"].iter().map(|serial| job(tenant, serial, token)).unzip();
        write(db.clone(), jobs).await;
        for answer in answers {
            let error = answer.await.unwrap().expect_err("the commit failed, so every job fails");
            assert!(error.to_string().contains("doomed at commit"), "{error}");
        }
        assert_eq!(count(db, "SELECT COUNT(*) FROM devices").await, 0);
        assert_eq!(count(db, "SELECT COUNT(*) FROM events").await, 0);
        assert_eq!(count(db, "SELECT uses FROM enrollment_tokens").await, 0);
    }
}
