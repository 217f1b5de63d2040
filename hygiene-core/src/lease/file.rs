//! [`FileLeaseStore`]: leases on one machine, as lock files.

use std::collections::{BTreeMap, HashMap};
use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{Fence, Grant, Holder, LeaseCapabilities, LeaseError, LeaseResult, LeaseStore, Owner};
use crate::journal::private::no_follow;
use crate::journal::Record;

/// Leases on one machine: a lock file per pool in a directory, held (an
/// exclusive `flock`) for as long as the lease; the kernel frees it when
/// the process dies, however it dies, so a lease never expires while its
/// holder lives and is free the moment it is gone (no takeover wait).
///
/// Files (0600, in a 0700 directory): `<pool>.lease` (the lock, and the
/// last fence and holder as JSON), `hosts.json` (which pool holds which
/// host, changed under the short lock of `hosts.lock`), and
/// `<pool>.journal.jsonl` (the journal written under the fence).
///
/// hygiene's default stays the journal's own file lock
/// ([`FileJournal`](crate::journal::FileJournal)); this store is the same
/// rule behind the [`LeaseStore`] trait, for hosts shared by the pools of
/// one machine.
#[derive(Debug)]
pub struct FileLeaseStore {
    dir: PathBuf,
    held: Mutex<HashMap<String, (Fence, File)>>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct PoolFile {
    fence: u64,
    holder: Option<Holder>,
}

impl FileLeaseStore {
    /// A store in `dir` (created 0700 when missing).
    ///
    /// # Errors
    /// [`LeaseError::Config`] when the directory cannot be created.
    pub fn new(dir: impl Into<PathBuf>) -> LeaseResult<Self> {
        let dir = dir.into();
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .map_err(|e| LeaseError::Config {
                store: dir.display().to_string(),
                message: format!("the directory cannot be created: {e}"),
            })?;
        Ok(Self {
            dir,
            held: Mutex::new(HashMap::new()),
        })
    }

    fn io(&self, what: &str, e: &std::io::Error) -> LeaseError {
        LeaseError::store(
            self.name(),
            format!("{what}: {e}; check the directory and its permissions"),
            None,
        )
    }

    fn pool_path(&self, pool: &str) -> LeaseResult<PathBuf> {
        if pool.is_empty()
            || pool.starts_with('.')
            || !pool
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
        {
            return Err(LeaseError::Config {
                store: self.name(),
                message: format!("pool name {pool:?} cannot name a lock file: use letters, digits, '.', '_', '-'"),
            });
        }
        Ok(self.dir.join(format!("{pool}.lease")))
    }

    fn open(&self, path: &Path) -> LeaseResult<File> {
        OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .custom_flags(no_follow())
            .open(path)
            .map_err(|e| self.io(&format!("{} cannot be opened", path.display()), &e))
    }

    fn read_pool(&self, mut file: &File) -> LeaseResult<PoolFile> {
        let mut text = String::new();
        file.seek(SeekFrom::Start(0))
            .and_then(|_| file.read_to_string(&mut text))
            .map_err(|e| self.io("a lease file cannot be read", &e))?;
        if text.trim().is_empty() {
            return Ok(PoolFile::default());
        }
        serde_json::from_str(&text).map_err(|e| {
            LeaseError::store(
                self.name(),
                format!("a lease file is damaged ({e}): move it away"),
                None,
            )
        })
    }

    fn write_pool(&self, mut file: &File, content: &PoolFile) -> LeaseResult<()> {
        let text = serde_json::to_string(content)
            .map_err(|e| LeaseError::store(self.name(), e.to_string(), None))?;
        file.set_len(0)
            .and_then(|()| file.seek(SeekFrom::Start(0)))
            .and_then(|_| file.write_all(text.as_bytes()))
            .and_then(|()| file.sync_data())
            .map_err(|e| self.io("a lease file cannot be written", &e))
    }

    /// Runs `f` on the host map under the hosts lock, writing it back when
    /// `f` returns `Ok(true)`.
    fn with_hosts<T>(
        &self,
        f: impl FnOnce(&mut BTreeMap<String, String>) -> LeaseResult<(T, bool)>,
    ) -> LeaseResult<T> {
        let lock = self.open(&self.dir.join("hosts.lock"))?;
        lock.lock()
            .map_err(|e| self.io("hosts.lock cannot be locked", &e))?;
        let path = self.dir.join("hosts.json");
        let mut map: BTreeMap<String, String> = match std::fs::read_to_string(&path) {
            Ok(t) => serde_json::from_str(&t).map_err(|e| {
                LeaseError::store(
                    self.name(),
                    format!("hosts.json is damaged ({e}): move it away"),
                    None,
                )
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeMap::new(),
            Err(e) => return Err(self.io("hosts.json cannot be read", &e)),
        };
        let (out, changed) = f(&mut map)?;
        if changed {
            let tmp = self.dir.join("hosts.json.tmp");
            let text = serde_json::to_string(&map)
                .map_err(|e| LeaseError::store(self.name(), e.to_string(), None))?;
            let mut file = OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .custom_flags(no_follow())
                .open(&tmp)
                .map_err(|e| self.io("hosts.json.tmp cannot be written", &e))?;
            file.write_all(text.as_bytes())
                .and_then(|()| file.sync_data())
                .and_then(|()| std::fs::rename(&tmp, &path))
                .map_err(|e| self.io("hosts.json cannot be written", &e))?;
        }
        Ok(out)
    }

    fn conflict(
        &self,
        map: &BTreeMap<String, String>,
        pool: &str,
        hosts: &[String],
    ) -> LeaseResult<()> {
        for h in hosts {
            if let Some(other) = map.get(h).filter(|p| *p != pool) {
                let holder = self.last_holder(other).unwrap_or_else(|| Holder {
                    pool: other.clone(),
                    owner: Owner {
                        run_id: "(unknown)".into(),
                        who: "unknown".into(),
                        started_at: String::new(),
                    },
                    fence: Fence(0),
                    hosts: vec![h.clone()],
                    duration: Duration::ZERO,
                    version: String::new(),
                    renewed_at: String::new(),
                });
                return Err(LeaseError::Held {
                    store: self.name(),
                    key: format!("host {h}"),
                    pool: other.clone(),
                    holder: Box::new(holder),
                    retry_in: None,
                });
            }
        }
        Ok(())
    }

    /// The last holder written in `pool`'s lease file (alive or not).
    fn last_holder(&self, pool: &str) -> Option<Holder> {
        let path = self.pool_path(pool).ok()?;
        let mut text = String::new();
        File::open(path).ok()?.read_to_string(&mut text).ok()?;
        serde_json::from_str::<PoolFile>(&text).ok()?.holder
    }

    /// `grant` is the lease this store holds now: runs `f` on its file.
    fn current<T>(&self, grant: &Grant, f: impl FnOnce(&File) -> LeaseResult<T>) -> LeaseResult<T> {
        let held = self
            .held
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match held.get(&grant.pool) {
            Some((fence, file)) if *fence == grant.fence => f(file),
            other => Err(LeaseError::Lost {
                store: self.name(),
                pool: grant.pool.clone(),
                fence: grant.fence,
                message: match other {
                    Some((f, _)) => format!("this process holds it with {f}"),
                    None => "released".into(),
                },
            }),
        }
    }

    fn set_hosts(&self, grant: &Grant, file: &File, hosts: Vec<String>) -> LeaseResult<()> {
        let mut content = self.read_pool(file)?;
        if let Some(h) = &mut content.holder {
            h.hosts = hosts;
            h.renewed_at = jiff::Timestamp::now().to_string();
        }
        debug_assert_eq!(content.fence, grant.fence.0);
        self.write_pool(file, &content)
    }

    fn journal_path(&self, pool: &str) -> LeaseResult<PathBuf> {
        self.pool_path(pool)
            .map(|p| p.with_extension("journal.jsonl"))
    }
}

fn hosts_of(map: &BTreeMap<String, String>, pool: &str) -> Vec<String> {
    map.iter()
        .filter(|(_, p)| *p == pool)
        .map(|(h, _)| h.clone())
        .collect()
}

#[async_trait::async_trait]
impl LeaseStore for FileLeaseStore {
    fn name(&self) -> String {
        format!("lock files in {}", self.dir.display())
    }

    fn capabilities(&self) -> LeaseCapabilities {
        LeaseCapabilities {
            expires: false,
            shared: false,
        }
    }

    fn duration(&self) -> Duration {
        // Never expires while its process lives; shown as a day.
        Duration::from_secs(24 * 3600)
    }

    async fn acquire(&self, pool: &str, owner: &Owner, hosts: &[String]) -> LeaseResult<Grant> {
        let path = self.pool_path(pool)?;
        let file = self.open(&path)?;
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                let holder = self.read_pool(&file)?.holder.unwrap_or_else(|| Holder {
                    pool: pool.to_owned(),
                    owner: Owner {
                        run_id: "(starting)".into(),
                        who: "another process".into(),
                        started_at: String::new(),
                    },
                    fence: Fence(0),
                    hosts: Vec::new(),
                    duration: self.duration(),
                    version: String::new(),
                    renewed_at: String::new(),
                });
                return Err(LeaseError::Held {
                    store: self.name(),
                    key: format!("pool {pool}"),
                    pool: pool.to_owned(),
                    holder: Box::new(holder),
                    retry_in: None,
                });
            }
            Err(TryLockError::Error(e)) => return Err(self.io("a lease file cannot be locked", &e)),
        }
        // Locked: a holder before us is gone (its process died, or it
        // released). Its hosts stay this pool's.
        let all = self.with_hosts(|map| {
            self.conflict(map, pool, hosts)?;
            for h in hosts {
                map.insert(h.clone(), pool.to_owned());
            }
            Ok((hosts_of(map, pool), !hosts.is_empty()))
        })?;
        let last = self.read_pool(&file)?;
        let fence = Fence(last.fence + 1);
        let holder = Holder {
            pool: pool.to_owned(),
            owner: owner.clone(),
            fence,
            hosts: all,
            duration: self.duration(),
            version: format!("{}", fence.0),
            renewed_at: jiff::Timestamp::now().to_string(),
        };
        self.write_pool(
            &file,
            &PoolFile {
                fence: fence.0,
                holder: Some(holder),
            },
        )?;
        self.held
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(pool.to_owned(), (fence, file));
        Ok(Grant {
            pool: pool.to_owned(),
            owner: owner.clone(),
            fence,
            duration: self.duration(),
        })
    }

    async fn take_hosts(&self, grant: &Grant, hosts: &[String]) -> LeaseResult<()> {
        self.current(grant, |file| {
            let all = self.with_hosts(|map| {
                self.conflict(map, &grant.pool, hosts)?;
                for h in hosts {
                    map.insert(h.clone(), grant.pool.clone());
                }
                Ok((hosts_of(map, &grant.pool), true))
            })?;
            self.set_hosts(grant, file, all)
        })
    }

    async fn give_back(&self, grant: &Grant, hosts: &[String]) -> LeaseResult<()> {
        self.current(grant, |file| {
            let all = self.with_hosts(|map| {
                for h in hosts {
                    if map.get(h) == Some(&grant.pool) {
                        map.remove(h);
                    }
                }
                Ok((hosts_of(map, &grant.pool), true))
            })?;
            self.set_hosts(grant, file, all)
        })
    }

    async fn renew(&self, grant: &Grant) -> LeaseResult<()> {
        // The lock is held as long as the file is open: nothing to renew.
        self.current(grant, |_| Ok(()))
    }

    async fn release(&self, grant: &Grant) -> LeaseResult<()> {
        self.current(grant, |file| {
            self.with_hosts(|map| {
                map.retain(|_, p| *p != grant.pool);
                Ok(((), true))
            })?;
            self.write_pool(
                file,
                &PoolFile {
                    fence: grant.fence.0,
                    holder: None,
                },
            )
        })?;
        // Closing the file unlocks it.
        self.held
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(&grant.pool);
        Ok(())
    }

    async fn holder(&self, pool: &str) -> LeaseResult<Option<Holder>> {
        if let Some((_, file)) = self
            .held
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(pool)
        {
            return Ok(self.read_pool(file)?.holder);
        }
        let path = self.pool_path(pool)?;
        if !path.exists() {
            return Ok(None);
        }
        let file = self.open(&path)?;
        match file.try_lock() {
            // Nobody holds it (a holder that died left its record: shown
            // nowhere, its lock is gone).
            Ok(()) => Ok(None),
            Err(TryLockError::WouldBlock) => Ok(self.read_pool(&file)?.holder),
            Err(TryLockError::Error(e)) => Err(self.io("a lease file cannot be locked", &e)),
        }
    }

    async fn append(&self, grant: &Grant, record: &Record) -> LeaseResult<()> {
        let path = self.journal_path(&grant.pool)?;
        self.current(grant, |_| {
            let mut line = serde_json::to_string(record)
                .map_err(|e| LeaseError::store(self.name(), e.to_string(), None))?;
            line.push('\n');
            let mut file = OpenOptions::new()
                .append(true)
                .create(true)
                .mode(0o600)
                .custom_flags(no_follow())
                .open(&path)
                .map_err(|e| self.io("the journal cannot be opened", &e))?;
            file.write_all(line.as_bytes())
                .and_then(|()| file.sync_data())
                .map_err(|e| self.io("the journal cannot be written", &e))
        })
    }

    async fn records(&self, pool: &str) -> LeaseResult<Vec<Record>> {
        let path = self.journal_path(pool)?;
        crate::journal::FileJournal::read(&path)
            .map_err(|e| LeaseError::store(self.name(), e.to_string(), None))
    }
}
