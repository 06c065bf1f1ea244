//! The stores users pick instead, each configured for durable writes as
//! its documentation recommends (see `systems::setup_notes`).

use std::path::Path;
use std::sync::{Arc, Mutex};

use crate::systems::Store;

pub fn open(name: &str, dir: &Path) -> Arc<dyn Store> {
    match name {
        "rocksdb" => Arc::new(Rocks::open(dir)),
        "sqlite" => Arc::new(Sqlite::open(dir)),
        "redb" => Arc::new(Redb::open(dir)),
        "fjall" => Arc::new(Fjall::open(dir)),
        other => panic!("unknown system {other}"),
    }
}

struct Rocks {
    db: rocksdb::DB,
    sync: rocksdb::WriteOptions,
}

impl Rocks {
    fn open(dir: &Path) -> Rocks {
        let mut options = rocksdb::Options::default();
        options.create_if_missing(true);
        if let Some(bytes) = crate::systems::cache_bytes() {
            let mut table = rocksdb::BlockBasedOptions::default();
            table.set_block_cache(&rocksdb::Cache::new_lru_cache(bytes as usize));
            options.set_block_based_table_factory(&table);
        }
        let db = rocksdb::DB::open(&options, dir).expect("open rocksdb");
        let mut sync = rocksdb::WriteOptions::default();
        sync.set_sync(true);
        Rocks { db, sync }
    }
}

impl Store for Rocks {
    fn put(&self, key: &[u8], value: &[u8]) {
        self.db.put_opt(key, value, &self.sync).expect("rocksdb put");
    }

    fn put_batch(&self, pairs: &[(&[u8], &[u8])]) {
        let mut batch = rocksdb::WriteBatch::default();
        for (k, v) in pairs {
            batch.put(k, v);
        }
        self.db.write_opt(batch, &self.sync).expect("rocksdb batch");
    }

    fn get(&self, key: &[u8]) -> Option<Option<Vec<u8>>> {
        Some(self.db.get(key).expect("rocksdb get"))
    }
}

struct Sqlite {
    path: std::path::PathBuf,
    writer: Mutex<rusqlite::Connection>,
    readers: Mutex<Vec<rusqlite::Connection>>,
}

impl Sqlite {
    fn connect(path: &Path) -> rusqlite::Connection {
        let conn = rusqlite::Connection::open(path).expect("open sqlite");
        conn.pragma_update(None, "journal_mode", "WAL").expect("WAL mode");
        conn.pragma_update(None, "synchronous", "FULL").expect("synchronous=FULL");
        conn.busy_timeout(std::time::Duration::from_secs(10)).expect("busy timeout");
        conn
    }

    fn open(dir: &Path) -> Sqlite {
        let path = dir.join("kv.sqlite");
        let writer = Sqlite::connect(&path);
        writer.execute("CREATE TABLE IF NOT EXISTS kv (k BLOB PRIMARY KEY, v BLOB) WITHOUT ROWID", []).expect("create");
        Sqlite { path, writer: Mutex::new(writer), readers: Mutex::new(Vec::new()) }
    }
}

impl Store for Sqlite {
    fn put(&self, key: &[u8], value: &[u8]) {
        let conn = self.writer.lock().expect("sqlite writer");
        let mut stmt = conn.prepare_cached("INSERT OR REPLACE INTO kv (k, v) VALUES (?1, ?2)").expect("prepare");
        stmt.execute((key, value)).expect("sqlite put");
    }

    fn put_batch(&self, pairs: &[(&[u8], &[u8])]) {
        let mut conn = self.writer.lock().expect("sqlite writer");
        let txn = conn.transaction().expect("begin");
        {
            let mut stmt = txn.prepare_cached("INSERT OR REPLACE INTO kv (k, v) VALUES (?1, ?2)").expect("prepare");
            for (k, v) in pairs {
                stmt.execute((k, v)).expect("sqlite insert");
            }
        }
        txn.commit().expect("sqlite commit");
    }

    fn get(&self, key: &[u8]) -> Option<Option<Vec<u8>>> {
        // One connection per concurrent reader, kept for reuse.
        let conn = self.readers.lock().expect("readers").pop().unwrap_or_else(|| Sqlite::connect(&self.path));
        let value = {
            let mut stmt = conn.prepare_cached("SELECT v FROM kv WHERE k = ?1").expect("prepare");
            let mut rows = stmt.query([key]).expect("query");
            rows.next().expect("row").map(|row| row.get::<_, Vec<u8>>(0).expect("blob"))
        };
        self.readers.lock().expect("readers").push(conn);
        Some(value)
    }
}

const REDB_TABLE: redb::TableDefinition<&[u8], &[u8]> = redb::TableDefinition::new("kv");

struct Redb {
    db: redb::Database,
}

impl Redb {
    fn open(dir: &Path) -> Redb {
        let mut builder = redb::Builder::new();
        if let Some(bytes) = crate::systems::cache_bytes() {
            builder.set_cache_size(bytes as usize);
        }
        let db = builder.create(dir.join("kv.redb")).expect("open redb");
        let txn = db.begin_write().expect("begin");
        txn.open_table(REDB_TABLE).expect("create table");
        txn.commit().expect("commit");
        Redb { db }
    }
}

impl Store for Redb {
    fn put(&self, key: &[u8], value: &[u8]) {
        self.put_batch(&[(key, value)]);
    }

    fn put_batch(&self, pairs: &[(&[u8], &[u8])]) {
        let txn = self.db.begin_write().expect("redb begin");
        {
            let mut table = txn.open_table(REDB_TABLE).expect("redb table");
            for (k, v) in pairs {
                table.insert(*k, *v).expect("redb insert");
            }
        }
        txn.commit().expect("redb commit");
    }

    fn get(&self, key: &[u8]) -> Option<Option<Vec<u8>>> {
        let txn = self.db.begin_read().expect("redb read");
        let table = txn.open_table(REDB_TABLE).expect("redb table");
        Some(table.get(key).expect("redb get").map(|v| v.value().to_vec()))
    }
}

struct Fjall {
    keyspace: fjall::Keyspace,
    partition: fjall::PartitionHandle,
}

impl Fjall {
    fn open(dir: &Path) -> Fjall {
        let mut config = fjall::Config::new(dir);
        if let Some(bytes) = crate::systems::cache_bytes() {
            config = config.cache_size(bytes);
        }
        let keyspace = config.open().expect("open fjall");
        let partition = keyspace.open_partition("kv", fjall::PartitionCreateOptions::default()).expect("partition");
        Fjall { keyspace, partition }
    }
}

impl Store for Fjall {
    fn put(&self, key: &[u8], value: &[u8]) {
        self.put_batch(&[(key, value)]);
    }

    fn put_batch(&self, pairs: &[(&[u8], &[u8])]) {
        let mut batch = self.keyspace.batch().durability(Some(fjall::PersistMode::SyncData));
        for (k, v) in pairs {
            batch.insert(&self.partition, *k, *v);
        }
        batch.commit().expect("fjall commit");
    }

    fn get(&self, key: &[u8]) -> Option<Option<Vec<u8>>> {
        Some(self.partition.get(key).expect("fjall get").map(|v| v.to_vec()))
    }
}
