//! The janitor reducers run beside their consume loops. It has two duties:
//!
//! - it fails a running job whose producer stopped publishing before sealing it (it died)
//!   and has not been heard from for `producer_timeout`, with a reason that says how to
//!   resume it (invariant 12);
//! - it republishes the reduce task of a partition whose lease was granted and then expired
//!   while the partition is not reduced (invariant 9): its holder froze (SIGSTOP) or died
//!   mid-reduce, and a frozen holder keeps its delivery unacked, so without this no other
//!   reducer would take the partition over. The frozen holder's late commit stays fenced.
//!   If no reducer took the partition a while later (the frozen holder had prefetched the
//!   republished task too), it is republished again.
//!
//! Must not: touch a job that is sealed, not running, or whose producer is still
//! heartbeating (the decision is [`crate::protocol::reduce::is_abandoned`]); republish a
//! task merely waiting in the queue, one whose lease is held, or the same expired grant
//! more than once per `republish_again_after` (the decision is
//! [`crate::protocol::reduce::expired_grants`], and the claim in Redis makes it once among
//! all reducers).

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::broker::consumer as service;
use crate::broker::deadline::BrokerError;
use crate::broker::publisher::{close_within, reduce_task_messages, PublishError, Publisher};
use crate::broker::topology::{self, BrokerNodes, Topology};
use crate::config::ConnectionConfig;
use crate::job::{now_ms, JobId, JobState};
use crate::protocol::reduce;
use crate::store::{Store, StoreError};

/// Why a sweep stopped early (the next sweep tries again).
#[derive(Debug, thiserror::Error)]
enum SweepError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Connect(#[from] topology::ConnectError),
    #[error(transparent)]
    Broker(#[from] BrokerError),
    #[error(transparent)]
    Publish(#[from] PublishError),
}

/// What the janitor needs to know.
pub struct Janitor {
    pub store: Store,
    pub connection: ConnectionConfig,
    /// The broker's nodes, in the janitor's own rotation (a node that refused it last time
    /// is tried last).
    pub nodes: BrokerNodes,
    pub producer_timeout: Duration,
    pub lease: Duration,
}

impl Janitor {
    /// Sweeps until shutdown.
    pub async fn run(self, shutdown: CancellationToken) {
        let period = reduce::janitor_sweep_period(self.producer_timeout, self.lease);
        while service::pause(period, &shutdown).await {
            if let Err(error) = self.sweep().await {
                tracing::warn!(error = %error, "janitor sweep failed; will retry");
            }
        }
    }

    async fn sweep(&self) -> Result<(), SweepError> {
        let now = now_ms();
        for job_id in self.store.job_ids().await? {
            let Some(progress) = self.store.job_progress(&job_id).await? else {
                continue;
            };
            let (state, total, last_seen_ms) =
                (progress.state, progress.total, progress.last_seen_ms);
            if state == JobState::Reducing {
                self.republish_expired_leases(&job_id).await?;
                continue;
            }
            if reduce::needs_closing(state, progress.partitions_closed) {
                // Its ender died between ending it and closing its partitions.
                if let Some(spec) = self.store.load_spec(&job_id).await? {
                    self.store.close_partitions(&spec, false).await?;
                    tracing::info!(job_id = %job_id, "closed the partitions of an ended job");
                }
                continue;
            }
            let silent = Duration::from_millis(now.saturating_sub(last_seen_ms));
            if !reduce::is_abandoned(state, total.is_some(), silent, self.producer_timeout) {
                continue;
            }
            let Some(status) = self.store.status(&job_id).await? else {
                continue;
            };
            let reason = reduce::abandoned_reason(silent, self.producer_timeout);
            if self
                .store
                .end_job(&status.spec, JobState::Failed, &reason)
                .await?
            {
                tracing::warn!(job_id = %job_id, "failed a job whose producer vanished");
            }
        }
        Ok(())
    }

    /// Republishes the reduce tasks of the job's partitions whose lease expired mid-reduce.
    async fn republish_expired_leases(&self, job_id: &str) -> Result<(), SweepError> {
        let Some(spec) = self.store.load_spec(job_id).await? else {
            return Ok(());
        };
        let leases = self.store.lease_facts(&spec).await?;
        let again_after = reduce::republish_again_after(self.lease);
        let expired = reduce::expired_grants(&leases, now_ms(), again_after);
        if expired.is_empty() {
            return Ok(());
        }
        let claimed = self
            .store
            .claim_lease_republish(&spec, &expired, again_after)
            .await?;
        if claimed.is_empty() {
            return Ok(());
        }
        tracing::warn!(
            job_id,
            partitions = ?claimed,
            "leases expired mid-reduce (their reducer froze or died); republishing those reduce tasks"
        );
        if let Err(error) = self.publish(&spec.id, spec.partitions, &claimed).await {
            // Give the claims back, so a later sweep tries again.
            for partition in &claimed {
                self.store
                    .release_lease_republish(&spec, *partition)
                    .await?;
            }
            return Err(error);
        }
        Ok(())
    }

    /// Publishes the reduce tasks of `partitions`, with confirms, on a connection of its
    /// own (a rare event: opened and closed each time).
    async fn publish(
        &self,
        job_id: &JobId,
        partitions: u32,
        republish: &[u32],
    ) -> Result<(), SweepError> {
        let topology = Topology::for_connection(&self.connection);
        let connected = topology::connect(
            &self.nodes,
            "reducer-janitor",
            topology.deadline().timeout(),
        )
        .await?;
        let topology = topology.at_node(&connected);
        let deadline = topology.deadline();
        let connection = &connected.connection;
        let published = async {
            let mut publisher = Publisher::open(connection, 1024 * 1024, deadline).await?;
            let tasks = reduce_task_messages(&topology, job_id, partitions)
                .enumerate()
                .filter(|(partition, _)| republish.contains(&(*partition as u32)))
                .map(|(_, message)| message);
            for message in tasks {
                publisher.publish_pending(message).await?;
            }
            publisher.flush().await?;
            // Closing the channel before its connection keeps lapin from logging an error.
            let _ = tokio::time::timeout(
                deadline.timeout(),
                publisher.channel().close(200, "republished".into()),
            )
            .await;
            Ok::<(), SweepError>(())
        }
        .await;
        close_within(connection, "republished", deadline).await;
        published
    }
}
