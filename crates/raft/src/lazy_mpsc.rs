//! The bounded channel openraft's tasks talk through, sized by what it holds rather than
//! by what it may hold (issue "many groups per node must be cheap", design decision 7).
//!
//! tokio's `mpsc::channel` allocates its first block of 32 slots when it is created,
//! whatever the bound, and keeps it while the channel lives. openraft creates several
//! channels per group (its API, notifications, the state machine's commands, one per
//! heartbeat worker), with messages of a few hundred bytes: tens of KiB per idle replica,
//! which at ten thousand replicas per node is most of the node's memory. This channel
//! holds its messages in a `VecDeque` that is empty until the first send and is given
//! back once it drains, so an idle channel costs one small allocation.
//!
//! Semantics are tokio's bounded channel's, as openraft relies on them: `send` waits for
//! room while `bound` messages are queued and fails (returning the message) once the
//! receiver is gone; `recv` yields every message sent before the last sender went away,
//! then `None`; a weak sender does not keep the channel open.

use std::collections::VecDeque;
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use openraft_rt::{Mpsc, MpscReceiver, MpscSender, MpscWeakSender, OptionalSend, SendError, TryRecvError};
use tokio::sync::{Notify, Semaphore};

/// A queue whose buffer is at most this many bytes is kept when it drains; a larger one
/// is freed (a burst does not pin its high-water mark for the channel's life).
const KEEP_BYTES: usize = 256;

/// The channel family openraft is given ([`crate::rt::Runtime`]).
pub struct LazyMpsc;

struct Shared<T> {
    queue: Mutex<Queue<T>>,
    /// Free slots: a send takes one, a receive gives it back.
    room: Semaphore,
    /// Wakes the receiver: a message queued, or the last sender gone.
    ready: Notify,
    /// Strong senders alive.
    senders: AtomicUsize,
}

struct Queue<T> {
    items: VecDeque<T>,
    receiver_gone: bool,
}

impl<T> Shared<T> {
    fn lock(&self) -> MutexGuard<'_, Queue<T>> {
        // A panic while the lock is held cannot leave the queue half-updated (each
        // critical section is one `VecDeque` call), so a poisoned lock is still sound.
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn pop(&self) -> Option<T> {
        let mut q = self.lock();
        let item = q.items.pop_front()?;
        if q.items.is_empty() && q.items.capacity() * size_of::<T>().max(1) > KEEP_BYTES {
            q.items = VecDeque::new();
        }
        drop(q);
        self.room.add_permits(1);
        Some(item)
    }
}

pub struct Sender<T> {
    shared: Arc<Shared<T>>,
}

pub struct WeakSender<T> {
    shared: Arc<Shared<T>>,
}

pub struct Receiver<T> {
    shared: Arc<Shared<T>>,
}

/// A channel that queues at most `bound` messages (at least one).
pub fn channel<T>(bound: usize) -> (Sender<T>, Receiver<T>) {
    let shared = Arc::new(Shared {
        queue: Mutex::new(Queue { items: VecDeque::new(), receiver_gone: false }),
        room: Semaphore::new(bound.clamp(1, Semaphore::MAX_PERMITS)),
        ready: Notify::new(),
        senders: AtomicUsize::new(1),
    });
    (Sender { shared: shared.clone() }, Receiver { shared })
}

impl<T> Sender<T> {
    pub async fn send(&self, msg: T) -> Result<(), SendError<T>> {
        match self.shared.room.acquire().await {
            Ok(permit) => permit.forget(),
            Err(_closed) => return Err(SendError(msg)),
        }
        let mut q = self.shared.lock();
        if q.receiver_gone {
            return Err(SendError(msg));
        }
        q.items.push_back(msg);
        drop(q);
        self.shared.ready.notify_one();
        Ok(())
    }

    pub fn downgrade(&self) -> WeakSender<T> {
        WeakSender { shared: self.shared.clone() }
    }
}

impl<T> Clone for Sender<T> {
    fn clone(&self) -> Self {
        self.shared.senders.fetch_add(1, Ordering::SeqCst);
        Sender { shared: self.shared.clone() }
    }
}

impl<T> Drop for Sender<T> {
    fn drop(&mut self) {
        if self.shared.senders.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.shared.ready.notify_one();
        }
    }
}

impl<T> WeakSender<T> {
    pub fn upgrade(&self) -> Option<Sender<T>> {
        let mut n = self.shared.senders.load(Ordering::SeqCst);
        loop {
            if n == 0 {
                return None;
            }
            match self.shared.senders.compare_exchange(n, n + 1, Ordering::SeqCst, Ordering::SeqCst) {
                Ok(_) => return Some(Sender { shared: self.shared.clone() }),
                Err(now) => n = now,
            }
        }
    }
}

impl<T> Clone for WeakSender<T> {
    fn clone(&self) -> Self {
        WeakSender { shared: self.shared.clone() }
    }
}

impl<T> Receiver<T> {
    pub async fn recv(&mut self) -> Option<T> {
        loop {
            match self.try_recv() {
                Ok(item) => return Some(item),
                Err(TryRecvError::Disconnected) => return None,
                // `notify_one` stores a wake-up when nobody waits, so a message queued
                // between the look above and this wait is not missed.
                Err(TryRecvError::Empty) => self.shared.ready.notified().await,
            }
        }
    }

    pub fn try_recv(&mut self) -> Result<T, TryRecvError> {
        if let Some(item) = self.shared.pop() {
            return Ok(item);
        }
        if self.shared.senders.load(Ordering::SeqCst) > 0 {
            return Err(TryRecvError::Empty);
        }
        // The last sender may have queued a message just before it went away.
        self.shared.pop().ok_or(TryRecvError::Disconnected)
    }
}

impl<T> Drop for Receiver<T> {
    fn drop(&mut self) {
        let items = {
            let mut q = self.shared.lock();
            q.receiver_gone = true;
            std::mem::take(&mut q.items)
        };
        self.shared.room.close();
        drop(items);
    }
}

impl Mpsc for LazyMpsc {
    type Sender<T: OptionalSend> = Sender<T>;
    type Receiver<T: OptionalSend> = Receiver<T>;
    type WeakSender<T: OptionalSend> = WeakSender<T>;

    fn channel<T: OptionalSend>(buffer: usize) -> (Sender<T>, Receiver<T>) {
        channel(buffer)
    }
}

impl<T: OptionalSend> MpscSender<LazyMpsc, T> for Sender<T> {
    fn send(&self, msg: T) -> impl Future<Output = Result<(), SendError<T>>> + OptionalSend {
        Sender::send(self, msg)
    }

    fn downgrade(&self) -> WeakSender<T> {
        Sender::downgrade(self)
    }
}

impl<T: OptionalSend> MpscReceiver<T> for Receiver<T> {
    fn recv(&mut self) -> impl Future<Output = Option<T>> + OptionalSend {
        Receiver::recv(self)
    }

    fn try_recv(&mut self) -> Result<T, TryRecvError> {
        Receiver::try_recv(self)
    }
}

impl<T: OptionalSend> MpscWeakSender<LazyMpsc, T> for WeakSender<T> {
    fn upgrade(&self) -> Option<Sender<T>> {
        WeakSender::upgrade(self)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn messages_arrive_in_order_and_the_channel_closes_after_the_last_sender() {
        let (tx, mut rx) = channel::<u32>(4);
        let tx2 = tx.clone();
        tx.send(1).await.unwrap();
        tx2.send(2).await.unwrap();
        drop(tx);
        tx2.send(3).await.unwrap();
        drop(tx2);
        assert_eq!((rx.recv().await, rx.recv().await, rx.recv().await), (Some(1), Some(2), Some(3)));
        assert_eq!(rx.recv().await, None);
        assert_eq!(rx.try_recv(), Err(TryRecvError::Disconnected));
    }

    #[tokio::test]
    async fn a_full_channel_makes_the_sender_wait_until_a_message_is_taken() {
        let (tx, mut rx) = channel::<u32>(2);
        tx.send(1).await.unwrap();
        tx.send(2).await.unwrap();
        let blocked = tokio::time::timeout(Duration::from_millis(50), tx.send(3)).await;
        assert!(blocked.is_err(), "a third message waits for room");
        let sender = tokio::spawn(async move { tx.send(3).await.map_err(|e| e.0) });
        tokio::task::yield_now().await;
        assert_eq!(rx.recv().await, Some(1));
        sender.await.unwrap().unwrap();
        assert_eq!((rx.recv().await, rx.recv().await, rx.recv().await), (Some(2), Some(3), None));
    }

    #[tokio::test]
    async fn a_send_after_the_receiver_is_gone_returns_the_message() {
        let (tx, rx) = channel::<String>(1);
        tx.send("queued".into()).await.unwrap();
        let waiting = tokio::spawn({
            let tx = tx.clone();
            async move { tx.send("waiting".into()).await.map_err(|e| e.0) }
        });
        tokio::task::yield_now().await;
        drop(rx);
        assert_eq!(waiting.await.unwrap(), Err("waiting".to_string()), "a sender waiting for room is released");
        assert_eq!(tx.send("late".into()).await.map_err(|e| e.0), Err("late".to_string()));
    }

    #[tokio::test]
    async fn a_weak_sender_neither_keeps_the_channel_open_nor_upgrades_after_it_closed() {
        let (tx, mut rx) = channel::<u32>(1);
        let weak = tx.downgrade();
        let strong = weak.upgrade().expect("a sender is alive");
        drop(tx);
        strong.send(7).await.unwrap();
        drop(strong);
        assert_eq!(rx.recv().await, Some(7));
        assert_eq!(rx.recv().await, None);
        assert!(weak.upgrade().is_none());
    }

    #[tokio::test]
    async fn a_waiting_receiver_wakes_for_a_message_and_for_the_last_sender_going() {
        let (tx, mut rx) = channel::<u32>(8);
        let got = tokio::spawn(async move { (rx.recv().await, rx.recv().await) });
        tokio::task::yield_now().await;
        tx.send(5).await.unwrap();
        tokio::task::yield_now().await;
        drop(tx);
        assert_eq!(got.await.unwrap(), (Some(5), None));
    }

    #[test]
    fn a_drained_queue_gives_its_buffer_back() {
        let (tx, mut rx) = channel::<[u8; 100]>(1000);
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        rt.block_on(async {
            for _ in 0..50 {
                tx.send([0; 100]).await.unwrap();
            }
            assert!(rx.shared.lock().items.capacity() >= 50);
            while rx.try_recv().is_ok() {}
            assert_eq!(rx.shared.lock().items.capacity(), 0, "freed once empty");
        });
    }

    /// Many senders on many threads, one receiver: nothing lost, nothing twice, each
    /// sender's messages in its order.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn many_senders_lose_nothing() {
        let (tx, mut rx) = channel::<(u32, u32)>(16);
        let mut tasks = Vec::new();
        for s in 0..8u32 {
            let tx = tx.clone();
            tasks.push(tokio::spawn(async move {
                for i in 0..2_000u32 {
                    tx.send((s, i)).await.unwrap();
                }
            }));
        }
        drop(tx);
        let mut next = [0u32; 8];
        while let Some((s, i)) = rx.recv().await {
            assert_eq!(next[s as usize], i, "sender {s} in order");
            next[s as usize] += 1;
        }
        assert_eq!(next, [2_000; 8]);
        for t in tasks {
            t.await.unwrap();
        }
    }
}
