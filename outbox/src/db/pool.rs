//! The pool handle the relay and the inbox use: any bb8 pool, with the manager type erased, plus
//! one warm connection.
//!
//! bb8 tests every check-out (`test_on_check_out`, on by default; diesel-async's manager sends a
//! `SELECT 1`): one more round trip before each claim of the relay and each transaction of the
//! inbox, on the path from COMMIT to handler. Like HikariCP's `aliveBypassWindowMs` (same
//! 500 ms), a connection whose last use just succeeded is handed out again without that test:
//! [`Pooled::release`] parks it in a slot, and a [`ConnPool::get`] within the window takes it
//! back. The test still runs for every connection that failed, sat unused longer, or comes from
//! the pool itself.
//!
//! The slot holds at most one connection, never the pool's last one (it is kept only while the
//! pool could hand out another right away), is emptied back into the pool once the window has
//! passed, and is skipped for pools built with `test_on_check_out(false)` (nothing to save).

use std::ops::{Deref, DerefMut};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use super::{Database, transaction_depth};
use crate::Result;

/// How long after a successful use a connection is handed out without the pool's test.
const WARM: Duration = Duration::from_millis(500);

type Conn<C> = Box<dyn DerefMut<Target = C> + Send>;

/// A connection pool with its manager type erased: the relay and the inbox take any bb8 pool
/// whose connections are a [`Database`] (diesel-async's `Pool<AsyncPgConnection>`,
/// `Pool<SqliteConnection>`, or a pool with your own manager). See the module docs for the warm
/// connection. Public for the `inbox` crate, which runs its loops on the same handle; build
/// one with [`ConnPool::new`].
pub struct ConnPool<C> {
    shared: Arc<Shared<C>>,
}

struct Shared<C> {
    source: Box<dyn Source<C>>,
    /// The pool tests its check-outs (its configuration, read once): otherwise nothing to save.
    tests_check_outs: bool,
    max_size: u32,
    /// Built with [`super::pooler::Manager`]: behind a transaction pooler.
    transaction_pooled: bool,
    slot: Mutex<Slot<C>>,
}

struct Slot<C> {
    conn: Option<(Conn<C>, Instant)>,
    /// A task is waiting to empty the slot once its connection has gone cold.
    reaper: bool,
}

impl<C> Clone for ConnPool<C> {
    fn clone(&self) -> Self {
        Self { shared: self.shared.clone() }
    }
}

impl<C: Database> ConnPool<C> {
    /// Wraps a bb8 pool.
    pub fn new<M>(pool: bb8::Pool<M>) -> Self
    where
        M: bb8::ManageConnection<Connection = C>,
        M::Error: std::error::Error,
    {
        let slot = Mutex::new(Slot { conn: None, reaper: false });
        let config = pool.config();
        let (tests_check_outs, max_size) = (config.test_on_check_out, config.max_size);
        let transaction_pooled = super::pooler::is_transaction_pooled::<M>();
        Self {
            shared: Arc::new(Shared { source: Box::new(pool), tests_check_outs, max_size, transaction_pooled, slot }),
        }
    }

    /// The pool was built with [`outbox::pooler::Manager`](super::pooler::Manager): every
    /// statement must run inside a transaction, and there is no session to LISTEN on.
    pub fn transaction_pooled(&self) -> bool {
        self.shared.transaction_pooled
    }

    /// A connection: the warm one if it was released less than 500 ms ago, else one from the
    /// pool. Dropped, it goes back to the pool; see [`Pooled::release`].
    pub async fn get(&self) -> Result<Pooled<C>> {
        let warm = {
            let mut slot = self.shared.slot.lock().unwrap_or_else(|e| e.into_inner());
            slot.conn.take()
        };
        let conn = match warm {
            Some((conn, at)) if at.elapsed() < WARM => conn,
            cold => {
                drop(cold); // back to the pool, which tests what it hands out
                self.shared.source.get().await?
            }
        };
        Ok(Pooled { conn, shared: self.shared.clone() })
    }

    /// A connection of its own, opened by the pool's manager but outside the pool (not counted
    /// against its size), for a session held for a long time: the relay's LISTEN. Holding a
    /// pooled one would starve a pool of size 1.
    pub async fn dedicated(&self) -> Result<C> {
        self.shared.source.dedicated().await
    }
}

impl<C> std::fmt::Debug for ConnPool<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ConnPool")
    }
}

/// A pooled connection (derefs to the connection). Dropped, it goes back to the pool.
pub struct Pooled<C> {
    conn: Conn<C>,
    shared: Arc<Shared<C>>,
}

impl<C: Database> Pooled<C> {
    /// Gives the connection back after its last statement succeeded (outside a transaction): the
    /// next [`ConnPool::get`] within 500 ms gets it again without the pool's check-out test.
    /// Errors must drop the connection instead, so that the pool tests it before its next use.
    pub fn release(mut self) {
        if !self.shared.tests_check_outs
            || !matches!(transaction_depth(&mut **self.conn), Ok(None))
            || !self.shared.has_spare()
        {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else { return };
        let Self { conn, shared } = self;
        let mut slot = shared.slot.lock().unwrap_or_else(|e| e.into_inner());
        if slot.conn.is_some() {
            return; // one warm connection is enough; this one goes back to the pool
        }
        slot.conn = Some((conn, Instant::now()));
        if !slot.reaper {
            slot.reaper = true;
            runtime.spawn(reap(Arc::downgrade(&shared)));
        }
    }
}

impl<C> Shared<C> {
    /// The pool could hand out another connection right now (an idle one, or room to open one).
    fn has_spare(&self) -> bool {
        let (open, idle) = self.source.counts();
        idle > 0 || open < self.max_size
    }
}

/// Empties the slot once its connection has gone unused for the whole window.
async fn reap<C: 'static>(shared: Weak<Shared<C>>) {
    let mut due = Instant::now() + WARM;
    loop {
        tokio::time::sleep_until(due.into()).await;
        let Some(shared) = shared.upgrade() else { return };
        let cold = {
            let mut slot = shared.slot.lock().unwrap_or_else(|e| e.into_inner());
            match slot.conn {
                Some((_, at)) if at.elapsed() < WARM => {
                    due = at + WARM;
                    continue;
                }
                _ => {
                    slot.reaper = false;
                    slot.conn.take()
                }
            }
        };
        drop(cold); // back to the pool, outside the lock
        return;
    }
}

impl<C> Deref for Pooled<C> {
    type Target = C;
    fn deref(&self) -> &C {
        &self.conn
    }
}

impl<C> DerefMut for Pooled<C> {
    fn deref_mut(&mut self) -> &mut C {
        &mut self.conn
    }
}

#[async_trait::async_trait]
trait Source<C>: Send + Sync {
    async fn get(&self) -> Result<Conn<C>>;
    async fn dedicated(&self) -> Result<C>;
    /// Connections open, and of those idle in the pool.
    fn counts(&self) -> (u32, u32);
}

#[async_trait::async_trait]
impl<M> Source<M::Connection> for bb8::Pool<M>
where
    M: bb8::ManageConnection,
    M::Connection: Database,
    M::Error: std::error::Error,
{
    async fn get(&self) -> Result<Conn<M::Connection>> {
        match self.get_owned().await {
            Ok(conn) => Ok(Box::new(conn)),
            Err(e) => Err(crate::Error::new(crate::ErrorKind::Database, format!("connection pool: {e}"))),
        }
    }

    async fn dedicated(&self) -> Result<M::Connection> {
        self.dedicated_connection()
            .await
            .map_err(|e| crate::Error::new(crate::ErrorKind::Database, format!("dedicated connection: {e}")))
    }

    fn counts(&self) -> (u32, u32) {
        let state = self.state();
        (state.connections, state.idle_connections)
    }
}
