//! [`DynamoLeaseStore`]: shared leases and the run's journal in a DynamoDB
//! table, the way the DynamoDB lock client keeps locks.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use aws_sdk_dynamodb::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_dynamodb::types::{
    AttributeDefinition, AttributeValue, BillingMode, ConditionCheck, Delete, KeySchemaElement,
    KeyType, Put, ScalarAttributeType, TransactWriteItem, Update,
};
use aws_sdk_dynamodb::Client;
use hygiene_core::journal::Record;
use hygiene_core::lease::{
    Fence, Grant, Holder, LeaseCapabilities, LeaseError, LeaseResult, LeaseStore, Owner, Sightings,
};

type Item = HashMap<String, AttributeValue>;

/// Leases in a DynamoDB table (key: `pk` string, `sk` number), shared by
/// every machine with the same table:
///
/// - a pool's lease is the item `pool#<pool>`: its fence, its owner, the
///   hosts it has out, its lease duration and a **record version** that
///   every write changes (a fresh UUID);
/// - a host is the item `host#<host>` naming the pool that has it out;
/// - the journal is the items `journal#<pool>`, one per record, numbered.
///
/// Every write is conditional: an acquire on the version it saw (or on the
/// item's absence), everything a holder does on its fence, and acquire and
/// `take_hosts` are one `TransactWriteItems` with the pool and each host,
/// refused as a whole with the conflicting key named. A takeover follows
/// the DynamoDB lock client: only after this client saw the same version
/// unchanged for the holder's whole lease duration, on its own monotonic
/// clock ([`Sightings`]); no clock of another machine is read.
#[derive(Debug)]
pub struct DynamoLeaseStore {
    client: Client,
    table: String,
    duration: Duration,
    sightings: Sightings,
    /// Next journal number per pool, for this client's appends.
    next_seq: Mutex<HashMap<String, i64>>,
}

fn s(v: impl Into<String>) -> AttributeValue {
    AttributeValue::S(v.into())
}

fn n(v: impl ToString) -> AttributeValue {
    AttributeValue::N(v.to_string())
}

fn key(pk: String, sk: i64) -> Item {
    HashMap::from([("pk".to_owned(), s(pk)), ("sk".to_owned(), n(sk))])
}

fn pool_pk(pool: &str) -> String {
    format!("pool#{pool}")
}

fn host_pk(host: &str) -> String {
    format!("host#{host}")
}

fn journal_pk(pool: &str) -> String {
    format!("journal#{pool}")
}

fn version() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// What a pool item holds.
struct PoolItem {
    fence: u64,
    version: String,
    holder: Option<Holder>,
}

impl DynamoLeaseStore {
    /// A store in `table` through `client`, granting leases of `duration`.
    pub fn new(client: Client, table: impl Into<String>, duration: Duration) -> Self {
        Self {
            client,
            table: table.into(),
            duration,
            sightings: Sightings::new(),
            next_seq: Mutex::new(HashMap::new()),
        }
    }

    /// A store in `table` with a client from `sdk` (region, credentials)
    /// and, for tests against moto, an `endpoint_url`.
    ///
    /// # Errors
    /// [`hygiene_core::Error::InvalidConfig`] for an endpoint that is not an
    /// http(s) URL or an empty table name.
    pub fn from_sdk_config(
        sdk: &crate::SdkConfig,
        endpoint_url: Option<String>,
        table: impl Into<String>,
        duration: Duration,
    ) -> hygiene_core::Result<Self> {
        let table = table.into();
        if table.is_empty() {
            return Err(hygiene_core::Error::invalid_config(
                "table",
                "the DynamoDB table of the leases has no name: set table",
            ));
        }
        let client = crate::config::ClientSettings {
            sdk: Some(sdk.clone()),
            endpoint_url,
            counter: None,
        }
        .dynamodb()?;
        Ok(Self::new(client, table, duration))
    }

    /// Creates the table (on-demand billing; key `pk` S + `sk` N) and waits
    /// until it is active. For tests and first installs; an existing
    /// table is an error.
    ///
    /// # Errors
    /// As the other calls.
    pub async fn create_table(&self) -> LeaseResult<()> {
        let attr = |name: &str, t| {
            AttributeDefinition::builder()
                .attribute_name(name)
                .attribute_type(t)
                .build()
                .map_err(|e| LeaseError::store(self.name(), e.to_string(), None))
        };
        let key = |name: &str, t| {
            KeySchemaElement::builder()
                .attribute_name(name)
                .key_type(t)
                .build()
                .map_err(|e| LeaseError::store(self.name(), e.to_string(), None))
        };
        self.client
            .create_table()
            .table_name(&self.table)
            .billing_mode(BillingMode::PayPerRequest)
            .attribute_definitions(attr("pk", ScalarAttributeType::S)?)
            .attribute_definitions(attr("sk", ScalarAttributeType::N)?)
            .key_schema(key("pk", KeyType::Hash)?)
            .key_schema(key("sk", KeyType::Range)?)
            .send()
            .await
            .map_err(|e| self.error(e))?;
        for _ in 0..600 {
            let d = self
                .client
                .describe_table()
                .table_name(&self.table)
                .send()
                .await
                .map_err(|e| self.error(e))?;
            if d.table().and_then(|t| t.table_status()).map(|s| s.as_str()) == Some("ACTIVE") {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Err(LeaseError::unavailable(
            self.name(),
            "the table did not become active within 60 s",
            None,
        ))
    }

    /// Checks the table can be read and written: writes, reads back and
    /// deletes an item of its own (`probe#<uuid>`). For `hygiene validate`.
    ///
    /// # Errors
    /// [`LeaseError::Config`] for a missing table, else as the other calls.
    pub async fn check_writable(&self) -> LeaseResult<()> {
        let pk = format!("probe#{}", version());
        self.client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(key(pk.clone(), 0)))
            .send()
            .await
            .map_err(|e| self.error(e))?;
        self.client
            .delete_item()
            .table_name(&self.table)
            .set_key(Some(key(pk, 0)))
            .send()
            .await
            .map_err(|e| self.error(e))?;
        Ok(())
    }

    /// Maps an SDK error (the one place where DynamoDB's codes become
    /// lease errors).
    fn error<E, R>(&self, e: SdkError<E, R>) -> LeaseError
    where
        E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
        R: std::fmt::Debug + Send + Sync + 'static,
    {
        match &e {
            SdkError::ServiceError(se) => {
                let code = se.err().code().unwrap_or("").to_owned();
                let message = se.err().message().unwrap_or("").to_owned();
                match code.as_str() {
                    "ResourceNotFoundException" => LeaseError::Config {
                        store: self.name(),
                        message: format!("{message}: create the table (key `pk` string, `sk` number; `hygiene validate` says so) or fix `table`/`region`"),
                    },
                    "ProvisionedThroughputExceededException"
                    | "ThrottlingException"
                    | "RequestLimitExceeded"
                    | "InternalServerError"
                    | "ServiceUnavailable"
                    | "TransactionInProgressException" => LeaseError::unavailable(
                        self.name(),
                        format!("{code}: {message}"),
                        Some(Box::new(e)),
                    ),
                    _ => LeaseError::store(self.name(), format!("{code}: {message}"), Some(Box::new(e))),
                }
            }
            _ => LeaseError::unavailable(self.name(), format!("{e}"), Some(Box::new(e))),
        }
    }

    fn corrupt(&self, what: &str) -> LeaseError {
        LeaseError::store(
            self.name(),
            format!("a damaged item ({what}): read it in the table, fix or delete it"),
            None,
        )
    }

    async fn get(&self, pk: String) -> LeaseResult<Option<Item>> {
        let r = self
            .client
            .get_item()
            .table_name(&self.table)
            .set_key(Some(key(pk, 0)))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| self.error(e))?;
        Ok(r.item)
    }

    async fn pool_item(&self, pool: &str) -> LeaseResult<Option<PoolItem>> {
        let Some(item) = self.get(pool_pk(pool)).await? else {
            return Ok(None);
        };
        let text = |k: &str| item.get(k).and_then(|v| v.as_s().ok()).cloned();
        let num = |k: &str| {
            item.get(k)
                .and_then(|v| v.as_n().ok())
                .and_then(|v| v.parse::<u64>().ok())
        };
        let fence = num("fence").ok_or_else(|| self.corrupt("fence"))?;
        let version = text("version").ok_or_else(|| self.corrupt("version"))?;
        let holder = match text("owner") {
            None => None,
            Some(o) => {
                let owner: Owner = serde_json::from_str(&o).map_err(|_| self.corrupt("owner"))?;
                let hosts = item
                    .get("hosts")
                    .and_then(|v| v.as_l().ok())
                    .map(|l| l.iter().filter_map(|v| v.as_s().ok().cloned()).collect())
                    .unwrap_or_default();
                Some(Holder {
                    pool: pool.to_owned(),
                    owner,
                    fence: Fence(fence),
                    hosts,
                    duration: Duration::from_millis(num("duration_ms").unwrap_or(0)),
                    version: version.clone(),
                    renewed_at: text("renewed_at").unwrap_or_default(),
                })
            }
        };
        Ok(Some(PoolItem {
            fence,
            version,
            holder,
        }))
    }

    /// The refusal for `host`, naming the pool that has it out.
    async fn host_held(&self, host: &str) -> LeaseError {
        let pool = match self.get(host_pk(host)).await {
            Ok(Some(item)) => item
                .get("pool")
                .and_then(|v| v.as_s().ok())
                .cloned()
                .unwrap_or_default(),
            Ok(None) => String::new(),
            Err(e) => return e,
        };
        let holder = match self.pool_item(&pool).await {
            Ok(Some(PoolItem {
                holder: Some(h), ..
            })) => h,
            Ok(_) => Holder {
                pool: pool.clone(),
                owner: Owner {
                    run_id: "(released)".into(),
                    who: "unknown".into(),
                    started_at: String::new(),
                },
                fence: Fence(0),
                hosts: vec![host.to_owned()],
                duration: Duration::ZERO,
                version: String::new(),
                renewed_at: String::new(),
            },
            Err(e) => return e,
        };
        LeaseError::Held {
            store: self.name(),
            key: format!("host {host}"),
            pool,
            holder: Box::new(holder),
            retry_in: None,
        }
    }

    /// The refusal of a write made with `grant`: what the pool shows now.
    async fn lost(&self, grant: &Grant) -> LeaseError {
        let message = match self.pool_item(&grant.pool).await {
            Ok(Some(PoolItem {
                holder: Some(h), ..
            })) => format!("taken over by {h}"),
            Ok(_) => "released".to_owned(),
            Err(e) => format!("and the pool cannot be read: {e}"),
        };
        LeaseError::Lost {
            store: self.name(),
            pool: grant.pool.clone(),
            fence: grant.fence,
            message,
        }
    }

    /// The condition that `grant` is the pool's current lease.
    fn held_by(grant: &Grant) -> (String, HashMap<String, AttributeValue>) {
        (
            "#fence = :fence AND attribute_exists(#owner)".to_owned(),
            HashMap::from([(":fence".to_owned(), n(grant.fence.0))]),
        )
    }

    fn put_host(&self, pool: &str, host: &str) -> LeaseResult<TransactWriteItem> {
        let mut item = key(host_pk(host), 0);
        item.insert("pool".into(), s(pool));
        let put = Put::builder()
            .table_name(&self.table)
            .set_item(Some(item))
            .condition_expression("attribute_not_exists(pk) OR #pool = :pool")
            .expression_attribute_names("#pool", "pool")
            .expression_attribute_values(":pool", s(pool))
            .build()
            .map_err(|e| LeaseError::store(self.name(), e.to_string(), None))?;
        Ok(TransactWriteItem::builder().put(put).build())
    }

    fn delete_host(&self, pool: &str, host: &str) -> LeaseResult<TransactWriteItem> {
        let del = Delete::builder()
            .table_name(&self.table)
            .set_key(Some(key(host_pk(host), 0)))
            .condition_expression("attribute_not_exists(pk) OR #pool = :pool")
            .expression_attribute_names("#pool", "pool")
            .expression_attribute_values(":pool", s(pool))
            .build()
            .map_err(|e| LeaseError::store(self.name(), e.to_string(), None))?;
        Ok(TransactWriteItem::builder().delete(del).build())
    }

    /// Sets the pool's hosts (and a new version) under `grant`.
    fn update_hosts(&self, grant: &Grant, hosts: &[String]) -> LeaseResult<TransactWriteItem> {
        let (cond, mut values) = Self::held_by(grant);
        values.insert(
            ":hosts".into(),
            AttributeValue::L(hosts.iter().map(|h| s(h.clone())).collect()),
        );
        values.insert(":v".into(), s(version()));
        let up = Update::builder()
            .table_name(&self.table)
            .set_key(Some(key(pool_pk(&grant.pool), 0)))
            .update_expression("SET #hosts = :hosts, #ver = :v")
            .expression_attribute_names("#hosts", "hosts")
            .expression_attribute_names("#ver", "version")
            .condition_expression(cond)
            .expression_attribute_names("#owner", "owner")
            .expression_attribute_names("#fence", "fence")
            .set_expression_attribute_values(Some(values))
            .build()
            .map_err(|e| LeaseError::store(self.name(), e.to_string(), None))?;
        Ok(TransactWriteItem::builder().update(up).build())
    }

    /// Runs a transaction; a refusal gives the index of the first item
    /// whose condition failed.
    async fn transact(&self, items: Vec<TransactWriteItem>) -> LeaseResult<Result<(), usize>> {
        let r = self
            .client
            .transact_write_items()
            .set_transact_items(Some(items))
            .send()
            .await;
        match r {
            Ok(_) => Ok(Ok(())),
            Err(SdkError::ServiceError(se)) if se.err().is_transaction_canceled_exception() => {
                let failed = match se.err() {
                    aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsError::TransactionCanceledException(t) => t
                        .cancellation_reasons()
                        .iter()
                        .position(|r| r.code() == Some("ConditionalCheckFailed")),
                    _ => None,
                };
                match failed {
                    Some(i) => Ok(Err(i)),
                    None => Err(LeaseError::unavailable(
                        self.name(),
                        format!("a transaction was cancelled without a failed condition ({:?}): try again", se.err().message()),
                        None,
                    )),
                }
            }
            Err(e) => Err(self.error(e)),
        }
    }
}

#[async_trait::async_trait]
impl LeaseStore for DynamoLeaseStore {
    fn name(&self) -> String {
        format!("dynamodb table {}", self.table)
    }

    fn capabilities(&self) -> LeaseCapabilities {
        LeaseCapabilities {
            expires: true,
            shared: true,
        }
    }

    fn duration(&self) -> Duration {
        self.duration
    }

    async fn acquire(&self, pool: &str, owner: &Owner, hosts: &[String]) -> LeaseResult<Grant> {
        let current = self.pool_item(pool).await?;
        let mut inherited = Vec::new();
        if let Some(PoolItem {
            holder: Some(h), ..
        }) = &current
        {
            if let Some(left) = self.sightings.observe(pool, &h.version, h.duration) {
                return Err(LeaseError::Held {
                    store: self.name(),
                    key: format!("pool {pool}"),
                    pool: pool.to_owned(),
                    holder: Box::new(h.clone()),
                    retry_in: Some(left),
                });
            }
            // Unchanged for a whole lease: taken over, with its hosts.
            inherited = h.hosts.clone();
            tracing::warn!(pool, holder = %h, "taking over a lease not renewed for a whole lease duration");
        }
        let fence = Fence(current.as_ref().map_or(0, |c| c.fence) + 1);
        let mut all: Vec<String> = inherited;
        for h in hosts {
            if !all.contains(h) {
                all.push(h.clone());
            }
        }
        let mut item = key(pool_pk(pool), 0);
        item.insert("fence".into(), n(fence.0));
        item.insert(
            "owner".into(),
            s(serde_json::to_string(owner)
                .map_err(|e| LeaseError::store(self.name(), e.to_string(), None))?),
        );
        item.insert(
            "hosts".into(),
            AttributeValue::L(all.iter().map(|h| s(h.clone())).collect()),
        );
        item.insert("duration_ms".into(), n(self.duration.as_millis()));
        item.insert("version".into(), s(version()));
        item.insert("renewed_at".into(), s(jiff::Timestamp::now().to_string()));
        let put = Put::builder().table_name(&self.table).set_item(Some(item));
        let put = match &current {
            None => put.condition_expression("attribute_not_exists(pk)"),
            Some(c) => put
                .condition_expression("#ver = :seen")
                .expression_attribute_names("#ver", "version")
                .expression_attribute_values(":seen", s(c.version.clone())),
        }
        .build()
        .map_err(|e| LeaseError::store(self.name(), e.to_string(), None))?;
        let mut items = vec![TransactWriteItem::builder().put(put).build()];
        for h in hosts {
            items.push(self.put_host(pool, h)?);
        }
        match self.transact(items).await? {
            Ok(()) => {
                self.sightings.forget(pool);
                self.next_seq
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .remove(pool);
                Ok(Grant {
                    pool: pool.to_owned(),
                    owner: owner.clone(),
                    fence,
                    duration: self.duration,
                })
            }
            Err(0) => {
                // Someone else wrote the pool since we read it.
                match self.pool_item(pool).await? {
                    Some(PoolItem {
                        holder: Some(h), ..
                    }) => {
                        let left = self.sightings.observe(pool, &h.version, h.duration);
                        Err(LeaseError::Held {
                            store: self.name(),
                            key: format!("pool {pool}"),
                            pool: pool.to_owned(),
                            holder: Box::new(h),
                            retry_in: left,
                        })
                    }
                    _ => Err(LeaseError::unavailable(
                        self.name(),
                        format!("pool {pool} changed while it was acquired: try again"),
                        None,
                    )),
                }
            }
            Err(i) => Err(self.host_held(&hosts[i - 1]).await),
        }
    }

    async fn take_hosts(&self, grant: &Grant, hosts: &[String]) -> LeaseResult<()> {
        let Some(PoolItem {
            holder: Some(h), ..
        }) = self.pool_item(&grant.pool).await?
        else {
            return Err(self.lost(grant).await);
        };
        let mut all = h.hosts;
        for x in hosts {
            if !all.contains(x) {
                all.push(x.clone());
            }
        }
        let mut items = vec![self.update_hosts(grant, &all)?];
        for x in hosts {
            items.push(self.put_host(&grant.pool, x)?);
        }
        match self.transact(items).await? {
            Ok(()) => Ok(()),
            Err(0) => Err(self.lost(grant).await),
            Err(i) => Err(self.host_held(&hosts[i - 1]).await),
        }
    }

    async fn give_back(&self, grant: &Grant, hosts: &[String]) -> LeaseResult<()> {
        let Some(PoolItem {
            holder: Some(h), ..
        }) = self.pool_item(&grant.pool).await?
        else {
            return Err(self.lost(grant).await);
        };
        let gone: Vec<&String> = hosts.iter().filter(|x| h.hosts.contains(x)).collect();
        let left: Vec<String> = h
            .hosts
            .iter()
            .filter(|x| !hosts.contains(x))
            .cloned()
            .collect();
        let mut items = vec![self.update_hosts(grant, &left)?];
        for x in gone {
            items.push(self.delete_host(&grant.pool, x)?);
        }
        match self.transact(items).await? {
            Ok(()) => Ok(()),
            Err(_) => Err(self.lost(grant).await),
        }
    }

    async fn renew(&self, grant: &Grant) -> LeaseResult<()> {
        let (cond, mut values) = Self::held_by(grant);
        values.insert(":v".into(), s(version()));
        values.insert(":at".into(), s(jiff::Timestamp::now().to_string()));
        let r = self
            .client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(key(pool_pk(&grant.pool), 0)))
            .update_expression("SET #ver = :v, renewed_at = :at")
            .expression_attribute_names("#ver", "version")
            .condition_expression(cond)
            .expression_attribute_names("#owner", "owner")
            .expression_attribute_names("#fence", "fence")
            .set_expression_attribute_values(Some(values))
            .send()
            .await;
        match r {
            Ok(_) => Ok(()),
            Err(SdkError::ServiceError(se)) if se.err().is_conditional_check_failed_exception() => {
                Err(self.lost(grant).await)
            }
            Err(e) => Err(self.error(e)),
        }
    }

    async fn release(&self, grant: &Grant) -> LeaseResult<()> {
        let Some(PoolItem {
            holder: Some(h), ..
        }) = self.pool_item(&grant.pool).await?
        else {
            return Err(self.lost(grant).await);
        };
        let (cond, mut values) = Self::held_by(grant);
        values.insert(":v".into(), s(version()));
        values.insert(":none".into(), AttributeValue::L(Vec::new()));
        let up = Update::builder()
            .table_name(&self.table)
            .set_key(Some(key(pool_pk(&grant.pool), 0)))
            .update_expression("SET #ver = :v, #hosts = :none REMOVE #owner")
            .expression_attribute_names("#hosts", "hosts")
            .expression_attribute_names("#ver", "version")
            .condition_expression(cond)
            .expression_attribute_names("#owner", "owner")
            .expression_attribute_names("#fence", "fence")
            .set_expression_attribute_values(Some(values))
            .build()
            .map_err(|e| LeaseError::store(self.name(), e.to_string(), None))?;
        let mut items = vec![TransactWriteItem::builder().update(up).build()];
        for x in &h.hosts {
            items.push(self.delete_host(&grant.pool, x)?);
        }
        match self.transact(items).await? {
            Ok(()) => Ok(()),
            Err(_) => Err(self.lost(grant).await),
        }
    }

    async fn holder(&self, pool: &str) -> LeaseResult<Option<Holder>> {
        Ok(self.pool_item(pool).await?.and_then(|p| p.holder))
    }

    async fn append(&self, grant: &Grant, record: &Record) -> LeaseResult<()> {
        let seq = {
            let known = self
                .next_seq
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .get(&grant.pool)
                .copied();
            match known {
                Some(n) => n,
                None => {
                    let last = self
                        .client
                        .query()
                        .table_name(&self.table)
                        .key_condition_expression("pk = :pk")
                        .expression_attribute_values(":pk", s(journal_pk(&grant.pool)))
                        .scan_index_forward(false)
                        .limit(1)
                        .consistent_read(true)
                        .send()
                        .await
                        .map_err(|e| self.error(e))?;
                    last.items()
                        .first()
                        .and_then(|i| i.get("sk"))
                        .and_then(|v| v.as_n().ok())
                        .and_then(|v| v.parse::<i64>().ok())
                        .map_or(0, |n| n + 1)
                }
            }
        };
        // The number is used once whatever happens: a write whose outcome
        // is unknown never makes the next one collide.
        self.next_seq
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(grant.pool.clone(), seq + 1);
        let mut item = key(journal_pk(&grant.pool), seq);
        item.insert(
            "record".into(),
            s(serde_json::to_string(record)
                .map_err(|e| LeaseError::store(self.name(), e.to_string(), None))?),
        );
        item.insert("fence".into(), n(grant.fence.0));
        let (cond, values) = Self::held_by(grant);
        let check = ConditionCheck::builder()
            .table_name(&self.table)
            .set_key(Some(key(pool_pk(&grant.pool), 0)))
            .condition_expression(cond)
            .expression_attribute_names("#owner", "owner")
            .expression_attribute_names("#fence", "fence")
            .set_expression_attribute_values(Some(values))
            .build()
            .map_err(|e| LeaseError::store(self.name(), e.to_string(), None))?;
        let put = Put::builder()
            .table_name(&self.table)
            .set_item(Some(item))
            .condition_expression("attribute_not_exists(pk)")
            .build()
            .map_err(|e| LeaseError::store(self.name(), e.to_string(), None))?;
        match self
            .transact(vec![
                TransactWriteItem::builder().condition_check(check).build(),
                TransactWriteItem::builder().put(put).build(),
            ])
            .await?
        {
            Ok(()) => Ok(()),
            Err(0) => Err(self.lost(grant).await),
            Err(_) => {
                self.next_seq
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .remove(&grant.pool);
                Err(LeaseError::unavailable(
                    self.name(),
                    format!(
                        "journal record {seq} of pool {} exists already: try again",
                        grant.pool
                    ),
                    None,
                ))
            }
        }
    }

    async fn records(&self, pool: &str) -> LeaseResult<Vec<Record>> {
        let mut out = Vec::new();
        let mut start: Option<Item> = None;
        loop {
            let page = self
                .client
                .query()
                .table_name(&self.table)
                .key_condition_expression("pk = :pk")
                .expression_attribute_values(":pk", s(journal_pk(pool)))
                .consistent_read(true)
                .set_exclusive_start_key(start.take())
                .send()
                .await
                .map_err(|e| self.error(e))?;
            for item in page.items() {
                let text = item
                    .get("record")
                    .and_then(|v| v.as_s().ok())
                    .ok_or_else(|| self.corrupt("journal record"))?;
                out.push(serde_json::from_str(text).map_err(|_| self.corrupt("journal record"))?);
            }
            match page.last_evaluated_key {
                Some(k) if !k.is_empty() => start = Some(k),
                _ => return Ok(out),
            }
        }
    }
}
