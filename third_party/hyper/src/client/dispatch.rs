use std::task::{Context, Poll};
use std::{future::Future, pin::Pin};

#[cfg(feature = "http2")]
use http::{Request, Response};
#[cfg(feature = "http2")]
use http_body::Body;
#[cfg(feature = "http2")]
use pin_project_lite::pin_project;
#[cfg(feature = "http1")]
use std::sync::{Arc, Mutex, MutexGuard};
#[cfg(feature = "http1")]
use std::task::Waker;
#[cfg(feature = "http2")]
use tokio::sync::mpsc;
use tokio::sync::oneshot;

#[cfg(feature = "http2")]
use crate::{body::Incoming, proto::h2::client::ResponseFutMap};

pub(crate) type RetryPromise<T, U> = oneshot::Receiver<Result<U, TrySendError<T>>>;
pub(crate) type Promise<T> = oneshot::Receiver<Result<T, crate::Error>>;

/// An error when calling `try_send_request`.
///
/// There is a possibility of an error occurring on a connection in-between the
/// time that a request is queued and when it is actually written to the IO
/// transport. If that happens, it is safe to return the request back to the
/// caller, as it was never fully sent.
#[derive(Debug)]
pub struct TrySendError<T> {
    pub(crate) error: crate::Error,
    pub(crate) message: Option<T>,
}

/// Gantry: the HTTP/1 client's channel. It carries one request at a time, so it is a single
/// slot behind a lock rather than hyper's unbounded queue and `want` signal: about 950
/// instructions less per request (callgrind; `GANTRY.md`). The semantics are hyper's: one
/// request may be buffered before the connection asks for one, a later one only once it has
/// asked (`is_ready`); a request still queued when the connection goes is handed back through
/// its callback as canceled, with the message.
#[cfg(feature = "http1")]
pub(crate) fn channel<T, U>() -> (Sender<T, U>, SlotReceiver<T, U>) {
    let slot = Arc::new(Mutex::new(Slot {
        queued: None,
        wanting: false,
        closed: false,
        sender_gone: false,
        rx_waker: None,
        tx_waker: None,
        answer: Answer::None,
        cancel_waker: None,
    }));
    let tx = Sender {
        buffered_once: false,
        slot: slot.clone(),
    };
    (tx, SlotReceiver { slot })
}

/// The HTTP/2 client's channel: unbounded, any number of requests queued at once.
#[cfg(feature = "http2")]
pub(crate) fn unbounded_channel<T, U>() -> (UnboundedSender<T, U>, Receiver<T, U>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let (giver, taker) = want::new();
    let tx = UnboundedSender {
        giver: giver.shared(),
        inner: tx,
    };
    let rx = Receiver { inner: rx, taker };
    (tx, rx)
}

/// What the HTTP/1 sender and the connection share.
#[cfg(feature = "http1")]
pub(crate) struct Slot<T, U> {
    /// A request the connection has not taken yet.
    queued: Option<Envelope<T, U>>,
    /// The connection found nothing queued and waits for a request (hyper's `want`).
    wanting: bool,
    /// The connection takes nothing more: closed or gone.
    closed: bool,
    /// The sender has been dropped.
    sender_gone: bool,
    /// The connection, waiting for a request.
    rx_waker: Option<Waker>,
    /// The sender, waiting in `poll_ready`.
    tx_waker: Option<Waker>,
    /// Gantry: the answer to the request whose promise is a [`SlotPromise`].
    answer: Answer<T, U>,
    /// The connection, waiting in `poll_canceled` for the slot promise to be dropped.
    cancel_waker: Option<Waker>,
}

/// Gantry: the response to a request sent with `try_send`, brought back in the slot the
/// connection already shares with the sender, rather than through a `oneshot` channel per
/// request (its allocation, its atomics and two copies of the response: about 350
/// instructions per request, callgrind). One request at a time has its answer here: a request
/// sent while the promise of an earlier one is still outstanding (not awaited to its end, not
/// dropped) gets a `oneshot` as in hyper, so an answer is never taken by another request's
/// promise.
#[cfg(feature = "http1")]
enum Answer<T, U> {
    /// No slot promise outstanding.
    None,
    /// The promise waits for its answer (with its task's waker, once polled).
    Waiting(Option<Waker>),
    /// The connection answered; the promise has not taken it yet.
    Ready(Result<U, TrySendError<T>>),
    /// The promise was dropped before the answer: its callback is canceled, and the answer,
    /// when it comes, is dropped.
    Dropped,
}

/// Gives the slot promise its answer (`Callback::Slot`). A value nobody waits for any more is
/// dropped after the lock is released.
#[cfg(feature = "http1")]
#[inline]
fn answer<T, U>(slot: &Mutex<Slot<T, U>>, val: Result<U, TrySendError<T>>) {
    let mut s = lock(slot);
    // Matched in place: the answer is large, and moving it out and back costs two copies.
    let waker = match &mut s.answer {
        Answer::Waiting(waker) => waker.take(),
        // Dropped (`None` and `Ready` cannot be: one callback per slot promise, one answer).
        _ => {
            s.answer = Answer::None;
            drop(s);
            drop(val);
            return;
        }
    };
    s.answer = Answer::Ready(val);
    drop(s);
    if let Some(w) = waker {
        w.wake();
    }
}

/// Gantry: the future of a response sent with the HTTP/1 `try_send` (see [`Answer`]).
#[cfg(feature = "http1")]
pub(crate) enum ResponsePromise<T, U> {
    /// The answer comes in the slot.
    Slot(SlotPromise<T, U>),
    /// An earlier request's slot promise was outstanding: a `oneshot`, as in hyper.
    Oneshot(RetryPromise<T, U>),
}

#[cfg(feature = "http1")]
impl<T, U> std::fmt::Debug for ResponsePromise<T, U> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ResponsePromise::Slot(_) => "ResponsePromise::Slot",
            ResponsePromise::Oneshot(_) => "ResponsePromise::Oneshot",
        })
    }
}

#[cfg(feature = "http1")]
impl<T, U> Future for ResponsePromise<T, U> {
    type Output = Result<U, TrySendError<T>>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.get_mut() {
            ResponsePromise::Slot(p) => Pin::new(p).poll(cx),
            ResponsePromise::Oneshot(rx) => Pin::new(rx).poll(cx).map(|r| match r {
                Ok(res) => res,
                // this is definite bug if it happens, but it shouldn't happen!
                Err(_) => unreachable!("dispatch dropped without returning error"),
            }),
        }
    }
}

/// Gantry: the receiving end of [`Answer`]. Dropping it before the answer cancels the request
/// (the connection sees it in `poll_canceled`, as it sees a dropped `oneshot::Receiver`).
#[cfg(feature = "http1")]
pub(crate) struct SlotPromise<T, U> {
    /// `None` once the answer is taken.
    slot: Option<Arc<Mutex<Slot<T, U>>>>,
}

#[cfg(feature = "http1")]
impl<T, U> Future for SlotPromise<T, U> {
    type Output = Result<U, TrySendError<T>>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        let slot = this.slot.as_ref().expect("SlotPromise polled after completion");
        let mut s = lock(slot);
        match &mut s.answer {
            Answer::Waiting(waker) => {
                register(waker, cx);
                Poll::Pending
            }
            Answer::Ready(_) => {
                let Answer::Ready(val) = std::mem::replace(&mut s.answer, Answer::None) else {
                    unreachable!()
                };
                drop(s);
                this.slot = None;
                Poll::Ready(val)
            }
            Answer::None | Answer::Dropped => unreachable!("slot promise without its answer"),
        }
    }
}

#[cfg(feature = "http1")]
impl<T, U> Drop for SlotPromise<T, U> {
    fn drop(&mut self) {
        let Some(slot) = self.slot.take() else {
            return;
        };
        let mut s = lock(&slot);
        match std::mem::replace(&mut s.answer, Answer::None) {
            Answer::Waiting(_) => {
                s.answer = Answer::Dropped;
                let waker = s.cancel_waker.take();
                drop(s);
                if let Some(w) = waker {
                    w.wake();
                }
            }
            Answer::Ready(val) => {
                drop(s);
                drop(val);
            }
            other => s.answer = other,
        }
    }
}

#[cfg(feature = "http1")]
fn lock<T, U>(slot: &Mutex<Slot<T, U>>) -> MutexGuard<'_, Slot<T, U>> {
    // Nothing panics while the lock is held (wakers are woken after it is released).
    slot.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(feature = "http1")]
fn register(waker: &mut Option<Waker>, cx: &Context<'_>) {
    match waker {
        Some(w) if w.will_wake(cx.waker()) => {}
        _ => *waker = Some(cx.waker().clone()),
    }
}

/// The sender of HTTP/1 requests and callbacks for when responses are ready: one request at a
/// time, plus one buffered before the connection first asks.
#[cfg(feature = "http1")]
pub(crate) struct Sender<T, U> {
    /// One message is always allowed, even if the Receiver hasn't asked
    /// for it yet. This boolean keeps track of whether we've sent one
    /// without notice.
    buffered_once: bool,
    slot: Arc<Mutex<Slot<T, U>>>,
}

/// An unbounded version.
///
/// Cannot poll the Giver, but can still use it to determine if the Receiver
/// has been dropped. However, this version can be cloned.
#[cfg(feature = "http2")]
pub(crate) struct UnboundedSender<T, U> {
    /// Only used for `is_closed`, since `mpsc::UnboundedSender` cannot be checked.
    giver: want::SharedGiver,
    inner: mpsc::UnboundedSender<Envelope<T, U>>,
}

#[cfg(feature = "http1")]
impl<T, U> Sender<T, U> {
    pub(crate) fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<crate::Result<()>> {
        let mut slot = lock(&self.slot);
        if slot.closed {
            Poll::Ready(Err(crate::Error::new_closed()))
        } else if slot.wanting {
            Poll::Ready(Ok(()))
        } else {
            register(&mut slot.tx_waker, cx);
            Poll::Pending
        }
    }

    pub(crate) fn is_ready(&self) -> bool {
        // Never set on a closed connection: `close` clears it, `poll_recv` sets it only open.
        lock(&self.slot).wanting
    }

    pub(crate) fn is_closed(&self) -> bool {
        lock(&self.slot).closed
    }

    /// Queues `val` when the connection has asked for a request (or none was buffered yet) and
    /// is not closed, with the callback `promise` makes; hands `val` back otherwise. Checked and
    /// queued under one lock: a request is never left in a slot no connection will look at.
    #[allow(clippy::type_complexity)]
    fn queue<P>(
        &mut self,
        val: T,
        wake: bool,
        promise: impl FnOnce(&mut Slot<T, U>, &Arc<Mutex<Slot<T, U>>>) -> (Callback<T, U>, P),
    ) -> Result<P, T> {
        let mut slot = lock(&self.slot);
        let asked = std::mem::replace(&mut slot.wanting, false);
        if !asked && self.buffered_once {
            return Err(val);
        }
        // If the receiver is ready *now*, then of course we can send. If it isn't ready yet,
        // but we don't have anything in the channel yet, then allow one message.
        self.buffered_once = true;
        if slot.closed || slot.queued.is_some() {
            return Err(val);
        }
        let (cb, p) = promise(&mut slot, &self.slot);
        slot.queued = Some(Envelope(Some((val, cb))));
        let waker = if wake { slot.rx_waker.take() } else { None };
        drop(slot);
        if let Some(w) = waker {
            w.wake();
        }
        Ok(p)
    }

    pub(crate) fn try_send(&mut self, val: T) -> Result<ResponsePromise<T, U>, T> {
        self.try_send_waking(val, true)
    }

    /// Gantry: `try_send` for a sender that polls the connection itself right after (it has
    /// no task of its own): the connection is not woken, which would only poll the caller's
    /// task once more for nothing.
    pub(crate) fn try_send_unwoken(&mut self, val: T) -> Result<ResponsePromise<T, U>, T> {
        self.try_send_waking(val, false)
    }

    fn try_send_waking(&mut self, val: T, wake: bool) -> Result<ResponsePromise<T, U>, T> {
        self.queue(val, wake, |slot, shared| {
            if matches!(slot.answer, Answer::None) {
                slot.answer = Answer::Waiting(None);
                let promise = SlotPromise {
                    slot: Some(shared.clone()),
                };
                (Callback::Slot(Some(shared.clone())), ResponsePromise::Slot(promise))
            } else {
                let (tx, rx) = oneshot::channel();
                (Callback::Retry(Some(tx)), ResponsePromise::Oneshot(rx))
            }
        })
    }

    pub(crate) fn send(&mut self, val: T) -> Result<Promise<U>, T> {
        self.queue(val, true, |_, _| {
            let (tx, rx) = oneshot::channel();
            (Callback::NoRetry(Some(tx)), rx)
        })
    }
}

#[cfg(feature = "http1")]
impl<T, U> Drop for Sender<T, U> {
    fn drop(&mut self) {
        let mut slot = lock(&self.slot);
        slot.sender_gone = true;
        let waker = slot.rx_waker.take();
        drop(slot);
        if let Some(w) = waker {
            w.wake();
        }
    }
}

/// The HTTP/1 connection's side of [`channel`].
#[cfg(feature = "http1")]
pub(crate) struct SlotReceiver<T, U> {
    slot: Arc<Mutex<Slot<T, U>>>,
}

#[cfg(feature = "http1")]
impl<T, U> SlotReceiver<T, U> {
    pub(crate) fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Option<(T, Callback<T, U>)>> {
        let mut slot = lock(&self.slot);
        if let Some(mut env) = slot.queued.take() {
            // Serving this one: the sender may not queue another until asked again.
            slot.wanting = false;
            return Poll::Ready(env.0.take());
        }
        if slot.sender_gone || slot.closed {
            return Poll::Ready(None);
        }
        register(&mut slot.rx_waker, cx);
        slot.wanting = true;
        let waker = slot.tx_waker.take();
        drop(slot);
        if let Some(w) = waker {
            w.wake();
        }
        Poll::Pending
    }

    /// Takes nothing more. A request still queued stays for `try_recv`.
    pub(crate) fn close(&mut self) {
        let mut slot = lock(&self.slot);
        slot.closed = true;
        slot.wanting = false;
        let waker = slot.tx_waker.take();
        drop(slot);
        if let Some(w) = waker {
            w.wake();
        }
    }

    pub(crate) fn try_recv(&mut self) -> Option<(T, Callback<T, U>)> {
        let mut env = lock(&self.slot).queued.take()?;
        env.0.take()
    }
}

#[cfg(feature = "http1")]
impl<T, U> Drop for SlotReceiver<T, U> {
    fn drop(&mut self) {
        self.close();
        // A request still queued is handed back through its callback, canceled.
        let queued = lock(&self.slot).queued.take();
        drop(queued);
    }
}

#[cfg(feature = "http2")]
impl<T, U> UnboundedSender<T, U> {
    pub(crate) fn is_ready(&self) -> bool {
        !self.giver.is_canceled()
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.giver.is_canceled()
    }

    pub(crate) fn try_send(&mut self, val: T) -> Result<RetryPromise<T, U>, T> {
        let (tx, rx) = oneshot::channel();
        self.inner
            .send(Envelope(Some((val, Callback::Retry(Some(tx))))))
            .map(move |()| rx)
            .map_err(|mut e| (e.0).0.take().expect("envelope not dropped").0)
    }

    pub(crate) fn send(&mut self, val: T) -> Result<Promise<U>, T> {
        let (tx, rx) = oneshot::channel();
        self.inner
            .send(Envelope(Some((val, Callback::NoRetry(Some(tx))))))
            .map(move |()| rx)
            .map_err(|mut e| (e.0).0.take().expect("envelope not dropped").0)
    }
}

#[cfg(feature = "http2")]
impl<T, U> Clone for UnboundedSender<T, U> {
    fn clone(&self) -> Self {
        UnboundedSender {
            giver: self.giver.clone(),
            inner: self.inner.clone(),
        }
    }
}

/// The HTTP/2 connection's side of [`unbounded_channel`].
#[cfg(feature = "http2")]
pub(crate) struct Receiver<T, U> {
    inner: mpsc::UnboundedReceiver<Envelope<T, U>>,
    taker: want::Taker,
}

#[cfg(feature = "http2")]
impl<T, U> Receiver<T, U> {
    pub(crate) fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Option<(T, Callback<T, U>)>> {
        match self.inner.poll_recv(cx) {
            Poll::Ready(item) => {
                // A want signaled after finding the queue empty can land after
                // the Sender's `give()` for the message taken here, as can one
                // signaled on a coop-budget Pending with a message queued.
                // Withdraw it, or the Sender reports this connection as ready
                // while it is still serving this message.
                self.taker.unwant();
                Poll::Ready(item.map(|mut env| env.0.take().expect("envelope not dropped")))
            }
            Poll::Pending => {
                self.taker.want();
                Poll::Pending
            }
        }
    }
}

#[cfg(feature = "http2")]
impl<T, U> Drop for Receiver<T, U> {
    fn drop(&mut self) {
        // Notify the giver about the closure first, before dropping
        // the mpsc::Receiver.
        self.taker.cancel();
    }
}

struct Envelope<T, U>(Option<(T, Callback<T, U>)>);

impl<T, U> Drop for Envelope<T, U> {
    fn drop(&mut self) {
        if let Some((val, cb)) = self.0.take() {
            cb.send(Err(TrySendError {
                error: crate::Error::new_canceled().with("connection closed"),
                message: Some(val),
            }));
        }
    }
}

pub(crate) enum Callback<T, U> {
    #[allow(unused)]
    Retry(Option<oneshot::Sender<Result<U, TrySendError<T>>>>),
    NoRetry(Option<oneshot::Sender<Result<U, crate::Error>>>),
    /// Gantry: the answer goes into the HTTP/1 slot ([`Answer`]).
    #[cfg(feature = "http1")]
    Slot(Option<Arc<Mutex<Slot<T, U>>>>),
}

impl<T, U> Drop for Callback<T, U> {
    fn drop(&mut self) {
        match self {
            Callback::Retry(tx) => {
                if let Some(tx) = tx.take() {
                    let _ = tx.send(Err(TrySendError {
                        error: dispatch_gone(),
                        message: None,
                    }));
                }
            }
            Callback::NoRetry(tx) => {
                if let Some(tx) = tx.take() {
                    let _ = tx.send(Err(dispatch_gone()));
                }
            }
            #[cfg(feature = "http1")]
            Callback::Slot(slot) => {
                if let Some(slot) = slot.take() {
                    answer(
                        &slot,
                        Err(TrySendError {
                            error: dispatch_gone(),
                            message: None,
                        }),
                    );
                }
            }
        }
    }
}

#[cold]
fn dispatch_gone() -> crate::Error {
    // FIXME(nox): What errors do we want here?
    crate::Error::new_user_dispatch_gone().with(if std::thread::panicking() {
        "user code panicked"
    } else {
        "runtime dropped the dispatch task"
    })
}

impl<T, U> Callback<T, U> {
    #[cfg(feature = "http2")]
    pub(crate) fn is_canceled(&self) -> bool {
        match self {
            Callback::Retry(Some(tx)) => tx.is_closed(),
            Callback::NoRetry(Some(tx)) => tx.is_closed(),
            _ => unreachable!(),
        }
    }

    pub(crate) fn poll_canceled(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        match self {
            Callback::Retry(Some(tx)) => tx.poll_closed(cx),
            Callback::NoRetry(Some(tx)) => tx.poll_closed(cx),
            #[cfg(feature = "http1")]
            Callback::Slot(Some(slot)) => {
                let mut s = lock(slot);
                if matches!(s.answer, Answer::Dropped) {
                    Poll::Ready(())
                } else {
                    register(&mut s.cancel_waker, cx);
                    Poll::Pending
                }
            }
            _ => unreachable!(),
        }
    }

    pub(crate) fn send(mut self, val: Result<U, TrySendError<T>>) {
        match &mut self {
            Callback::Retry(tx) => {
                let _ = tx
                    .take()
                    .expect("callback sender not dropped before send")
                    .send(val);
            }
            Callback::NoRetry(tx) => {
                let _ = tx
                    .take()
                    .expect("callback sender not dropped before send")
                    .send(val.map_err(|e| e.error));
            }
            #[cfg(feature = "http1")]
            Callback::Slot(slot) => {
                answer(
                    &slot.take().expect("callback sender not dropped before send"),
                    val,
                );
            }
        }
    }
}

impl<T> TrySendError<T> {
    /// Take the message from this error.
    ///
    /// The message will not always have been recovered. If an error occurs
    /// after the message has been serialized onto the connection, it will not
    /// be available here.
    pub fn take_message(&mut self) -> Option<T> {
        self.message.take()
    }

    /// Returns a reference to the recovered message.
    ///
    /// The message will not always have been recovered. If an error occurs
    /// after the message has been serialized onto the connection, it will not
    /// be available here.
    pub fn message(&self) -> Option<&T> {
        self.message.as_ref()
    }

    /// Consumes this to return the inner error.
    pub fn into_error(self) -> crate::Error {
        self.error
    }

    /// Returns a reference to the inner error.
    pub fn error(&self) -> &crate::Error {
        &self.error
    }
}

#[cfg(feature = "http2")]
pin_project! {
    pub struct SendWhen<B, E>
    where
        B: Body,
        B: 'static,
    {
        #[pin]
        pub(crate) when: ResponseFutMap<B, E>,
        #[pin]
        pub(crate) call_back: Option<Callback<Request<B>, Response<Incoming>>>,
    }
}

#[cfg(feature = "http2")]
impl<B, E> Future for SendWhen<B, E>
where
    B: Body + 'static,
    E: crate::rt::bounds::Http2UpgradedExec<B::Data>,
{
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();

        let mut call_back = this.call_back.take().expect("polled after complete");

        match Pin::new(&mut this.when).poll(cx) {
            Poll::Ready(Ok(res)) => {
                call_back.send(Ok(res));
                Poll::Ready(())
            }
            Poll::Pending => {
                // check if the callback is canceled
                match call_back.poll_canceled(cx) {
                    Poll::Ready(v) => v,
                    Poll::Pending => {
                        // Move call_back back to struct before return
                        this.call_back.set(Some(call_back));
                        return Poll::Pending;
                    }
                }
                trace!("send_when canceled");
                // Tell pipe_task to reset the h2 stream so that
                // RST_STREAM is sent and flow-control capacity freed.
                this.when.as_mut().cancel();
                Poll::Ready(())
            }
            Poll::Ready(Err((error, message))) => {
                call_back.send(Err(TrySendError { error, message }));
                Poll::Ready(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #[cfg(feature = "nightly")]
    extern crate test;

    use std::future::Future;
    use std::pin::Pin;
    use std::task::{Context, Poll};

    use super::{channel, Callback, SlotReceiver};

    #[derive(Debug)]
    struct Custom(#[allow(dead_code)] i32);

    impl<T, U> Future for SlotReceiver<T, U> {
        type Output = Option<(T, Callback<T, U>)>;

        fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
            self.poll_recv(cx)
        }
    }

    /// Helper to check if the future is ready after polling once.
    struct PollOnce<'fut, F>(&'fut mut F);

    impl<F, T> Future for PollOnce<'_, F>
    where
        F: Future<Output = T> + Unpin,
    {
        type Output = Option<()>;

        fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
            match Pin::new(&mut self.0).poll(cx) {
                Poll::Ready(_) => Poll::Ready(Some(())),
                Poll::Pending => Poll::Ready(None),
            }
        }
    }

    #[cfg(not(miri))]
    #[tokio::test]
    async fn drop_receiver_sends_cancel_errors() {
        let _ = pretty_env_logger::try_init();

        let (mut tx, mut rx) = channel::<Custom, ()>();

        // must poll once for try_send to succeed
        assert!(PollOnce(&mut rx).await.is_none(), "rx empty");

        let promise = tx.try_send(Custom(43)).unwrap();
        drop(rx);

        let fulfilled = promise.await;
        let err = fulfilled.expect_err("promise should error");
        match (err.error.is_canceled(), err.message) {
            (true, Some(_)) => (),
            e => panic!("expected Error::Cancel(_), found {:?}", e),
        }
    }

    #[cfg(not(miri))]
    #[tokio::test]
    async fn sender_checks_for_want_on_send() {
        let (mut tx, mut rx) = channel::<Custom, ()>();

        // one is allowed to buffer, second is rejected
        tx.try_send(Custom(1)).expect("1 buffered");
        tx.try_send(Custom(2)).expect_err("2 not ready");

        assert!(PollOnce(&mut rx).await.is_some(), "rx once");

        // Even though 1 has been popped, only 1 could be buffered for the
        // lifetime of the channel.
        tx.try_send(Custom(2)).expect_err("2 still not ready");

        assert!(PollOnce(&mut rx).await.is_none(), "rx empty");

        tx.try_send(Custom(2)).expect("2 ready");
    }

    // Gantry: the response comes back in the slot (`Answer`), one request at a time; a request
    // sent while an earlier promise is outstanding gets a oneshot, and no promise takes
    // another request's answer.
    #[cfg(not(miri))]
    #[tokio::test]
    async fn slot_answers_reach_their_own_promises() {
        use super::ResponsePromise;

        let (mut tx, mut rx) = channel::<Custom, i32>();
        let first = tx.try_send(Custom(1)).expect("1 buffered");
        assert!(matches!(first, ResponsePromise::Slot(_)));
        let (_, cb1) = rx.try_recv().expect("1 queued");
        cb1.send(Ok(1));
        // The connection asks for the next request before the first answer is taken.
        assert!(PollOnce(&mut rx).await.is_none(), "rx empty");
        let second = tx.try_send(Custom(2)).expect("2 ready");
        assert!(matches!(second, ResponsePromise::Oneshot(_)));
        let (_, cb2) = rx.try_recv().expect("2 queued");
        cb2.send(Ok(2));
        assert_eq!(second.await.expect("answer 2"), 2);
        assert_eq!(first.await.expect("answer 1"), 1);

        // Both taken: the next request has its answer in the slot again.
        assert!(PollOnce(&mut rx).await.is_none(), "rx empty");
        let third = tx.try_send(Custom(3)).expect("3 ready");
        assert!(matches!(third, ResponsePromise::Slot(_)));
        let (_, cb3) = rx.try_recv().expect("3 queued");
        cb3.send(Ok(3));
        assert_eq!(third.await.expect("answer 3"), 3);
    }

    #[cfg(not(miri))]
    #[tokio::test]
    async fn dropping_a_slot_promise_cancels_its_callback() {
        let (mut tx, mut rx) = channel::<Custom, i32>();
        let promise = tx.try_send(Custom(1)).expect("1 buffered");
        let (_, mut cb) = rx.try_recv().expect("1 queued");
        let mut canceled = std::pin::pin!(std::future::poll_fn(|cx| cb.poll_canceled(cx)));
        assert!(PollOnce(&mut canceled).await.is_none(), "promise alive");
        drop(promise);
        assert!(PollOnce(&mut canceled).await.is_some(), "promise dropped");
        // The answer nobody waits for is dropped, and the slot serves the next request.
        cb.send(Ok(1));
        assert!(PollOnce(&mut rx).await.is_none(), "rx empty");
        let next = tx.try_send(Custom(2)).expect("2 ready");
        assert!(matches!(next, super::ResponsePromise::Slot(_)));
    }

    #[cfg(not(miri))]
    #[tokio::test]
    async fn a_dropped_slot_callback_answers_with_an_error() {
        let (mut tx, mut rx) = channel::<Custom, i32>();
        let promise = tx.try_send(Custom(1)).expect("1 buffered");
        let (_, cb) = rx.try_recv().expect("1 queued");
        drop(cb);
        let err = promise.await.expect_err("dispatch gone");
        assert!(err.message.is_none());
    }

    // Gantry: a request queued with `try_send_unwoken` leaves the connection's task alone (its
    // caller polls the connection itself next); `try_send` wakes it.
    #[test]
    fn an_unwoken_send_does_not_wake_the_connection() {
        use std::sync::atomic::Ordering;
        let (waker, count) = crate::body::chan::tests::counting_waker();
        let mut cx = Context::from_waker(&waker);
        let wakes = || count.0.load(Ordering::Relaxed);
        let (mut tx, mut rx) = channel::<Custom, i32>();
        assert!(rx.poll_recv(&mut cx).is_pending(), "rx empty");
        let first = tx.try_send_unwoken(Custom(1)).expect("1 queued");
        assert_eq!(wakes(), 0, "woken by an unwoken send");
        let Poll::Ready(Some((_, cb))) = rx.poll_recv(&mut cx) else {
            panic!("1 not received");
        };
        cb.send(Ok(1));
        drop(first);
        assert!(rx.poll_recv(&mut cx).is_pending(), "rx empty");
        let _second = tx.try_send(Custom(2)).expect("2 queued");
        assert_eq!(wakes(), 1, "not woken by a send");
    }

    #[cfg(feature = "http2")]
    #[test]
    fn unbounded_sender_doesnt_bound_on_want() {
        let (mut tx, rx) = super::unbounded_channel::<Custom, ()>();

        tx.try_send(Custom(1)).unwrap();
        tx.try_send(Custom(2)).unwrap();
        tx.try_send(Custom(3)).unwrap();

        drop(rx);

        tx.try_send(Custom(4)).unwrap_err();
    }

    #[cfg(feature = "nightly")]
    #[bench]
    fn giver_queue_throughput(b: &mut test::Bencher) {
        use crate::{body::Incoming, Request, Response};

        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let (mut tx, mut rx) = channel::<Request<Incoming>, Response<Incoming>>();

        b.iter(move || {
            tx.send(Request::new(Incoming::empty())).unwrap();
            rt.block_on(async {
                loop {
                    let poll_once = PollOnce(&mut rx);
                    let opt = poll_once.await;
                    if opt.is_none() {
                        break;
                    }
                }
            });
        })
    }

    #[cfg(feature = "nightly")]
    #[bench]
    fn giver_queue_not_ready(b: &mut test::Bencher) {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let (_tx, mut rx) = channel::<i32, ()>();
        b.iter(move || {
            rt.block_on(async {
                let poll_once = PollOnce(&mut rx);
                assert!(poll_once.await.is_none());
            });
        })
    }

    #[cfg(feature = "nightly")]
    #[bench]
    fn giver_queue_cancel(b: &mut test::Bencher) {
        let (_tx, mut rx) = channel::<i32, ()>();

        b.iter(move || {
            rx.close();
        })
    }
}
