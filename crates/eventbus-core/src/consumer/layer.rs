//! Consumer middleware: a [`Layer`] wraps the handling of one delivery, sees and changes its
//! [`Context`], and returns an [`Outcome`]. The built-in policies are layers in a default
//! [`Stack`], which a consumer can reorder, replace or extend.
//!
//! ```
//! use eventbus_core::consumer::{Context, Layer, Next, Outcome};
//!
//! /// Counts deliveries that carry a `tenant` header.
//! #[derive(Debug, Default)]
//! struct TenantCount(std::sync::atomic::AtomicU64);
//!
//! #[eventbus_core::async_trait]
//! impl Layer for TenantCount {
//!     fn name(&self) -> &str {
//!         "tenant-count"
//!     }
//!     async fn handle(&self, ctx: &mut Context, next: Next<'_>) -> Outcome {
//!         if ctx.headers().get("tenant").is_some() {
//!             self.0.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
//!         }
//!         next.run(ctx).await
//!     }
//! }
//! ```

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use super::context::Context;
use super::dead_letter::Reason;
use crate::error::{Error, ErrorKind, Result};
use crate::signal::BoxError;

/// How handling a delivery ended. The runner acknowledges `Handled`, `Skipped` and
/// `DeadLettered`, and hands the others back to the broker.
#[derive(Debug)]
#[non_exhaustive]
pub enum Outcome {
    /// The receivers handled it.
    Handled,
    /// Not handled on purpose (an unknown type configured to be skipped, a receiver's
    /// [`Verdict::skip`]); acknowledged.
    Skipped {
        /// Why, for logs and metrics.
        reason: String,
    },
    /// Failed, and may succeed later: the retry layer tries again after `delay` (its backoff
    /// when `None`); without one the broker redelivers it after `delay`.
    Retry {
        /// What failed.
        error: Error,
        /// Asked-for wait before the next attempt.
        delay: Option<Duration>,
    },
    /// Failed for good: the dead-letter layer copies it to the dead-letter topic. Without one
    /// it goes back to the broker.
    GiveUp {
        /// Why.
        reason: Reason,
        /// The last error.
        error: Error,
    },
    /// Copied to the dead-letter topic; acknowledged.
    DeadLettered {
        /// The dead-letter topic.
        topic: String,
        /// Why.
        reason: Reason,
        /// The last error.
        error: Error,
    },
    /// Handed back to the broker for redelivery after `delay` (the dead-letter topic could not
    /// be written, say).
    Release {
        /// What went wrong.
        error: Error,
        /// When the broker should deliver it again.
        delay: Duration,
    },
}

impl Outcome {
    /// The outcome's name in logs, spans and metrics: `handled`, `skipped`, `retry`,
    /// `give-up`, `dead-lettered`, `released`.
    pub fn as_str(&self) -> &'static str {
        match self {
            Outcome::Handled => "handled",
            Outcome::Skipped { .. } => "skipped",
            Outcome::Retry { .. } => "retry",
            Outcome::GiveUp { .. } => "give-up",
            Outcome::DeadLettered { .. } => "dead-lettered",
            Outcome::Release { .. } => "released",
        }
    }

    /// The error, for outcomes that have one.
    pub fn error(&self) -> Option<&Error> {
        match self {
            Outcome::Handled | Outcome::Skipped { .. } => None,
            Outcome::Retry { error, .. }
            | Outcome::GiveUp { error, .. }
            | Outcome::DeadLettered { error, .. }
            | Outcome::Release { error, .. } => Some(error),
        }
    }

    /// Whether the consecutive-error limit counts it as a failure: a receiver that kept failing,
    /// or a delivery that could not be settled. Messages that are merely bad (unknown type,
    /// undecodable) are not the consumer's failure.
    pub fn is_failure(&self) -> bool {
        match self {
            Outcome::Handled | Outcome::Skipped { .. } => false,
            Outcome::GiveUp { reason, .. } | Outcome::DeadLettered { reason, .. } => {
                *reason == Reason::ReceiverFailed
            }
            Outcome::Retry { .. } | Outcome::Release { .. } => true,
        }
    }
}

/// A receiver's say in what happens next, returned as its error:
/// `Err(Verdict::retry_after(Duration::from_secs(5), e).into())`. A plain error means
/// [`Verdict::retry`].
#[derive(Debug)]
#[non_exhaustive]
pub enum Verdict {
    /// Try again, after `delay` or the retry policy's backoff.
    Retry {
        /// The wait, or the policy's.
        delay: Option<Duration>,
        /// What failed.
        cause: BoxError,
    },
    /// Dead-letter it now, without further attempts.
    GiveUp {
        /// What failed.
        cause: BoxError,
    },
    /// Acknowledge it without handling.
    Skip {
        /// Why, for logs and metrics.
        reason: String,
    },
}

impl Verdict {
    /// Try again after the retry policy's backoff.
    pub fn retry(cause: impl Into<BoxError>) -> Self {
        Verdict::Retry {
            delay: None,
            cause: cause.into(),
        }
    }

    /// Try again after `delay`.
    pub fn retry_after(delay: Duration, cause: impl Into<BoxError>) -> Self {
        Verdict::Retry {
            delay: Some(delay),
            cause: cause.into(),
        }
    }

    /// Dead-letter the event now.
    pub fn give_up(cause: impl Into<BoxError>) -> Self {
        Verdict::GiveUp {
            cause: cause.into(),
        }
    }

    /// Acknowledge the event without handling it.
    pub fn skip(reason: impl Into<String>) -> Self {
        Verdict::Skip {
            reason: reason.into(),
        }
    }

    /// The outcome of a receiver that returned `error`.
    pub(crate) fn outcome_of(error: BoxError, context: impl FnOnce(Error) -> Error) -> Outcome {
        let failed = |cause: BoxError| {
            context(
                Error::new(ErrorKind::Receiver, "a receiver returned an error")
                    .with_source(crate::signal::BoxedSource(cause)),
            )
        };
        match error.downcast::<Verdict>() {
            Ok(verdict) => match *verdict {
                Verdict::Retry { delay, cause } => Outcome::Retry {
                    error: failed(cause),
                    delay,
                },
                Verdict::GiveUp { cause } => Outcome::GiveUp {
                    reason: Reason::ReceiverFailed,
                    error: failed(cause),
                },
                Verdict::Skip { reason } => Outcome::Skipped { reason },
            },
            Err(error) => Outcome::Retry {
                error: failed(error),
                delay: None,
            },
        }
    }
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Verdict::Retry { cause, .. } => write!(f, "retry: {cause}"),
            Verdict::GiveUp { cause } => write!(f, "give up: {cause}"),
            Verdict::Skip { reason } => write!(f, "skip: {reason}"),
        }
    }
}

impl std::error::Error for Verdict {}

/// Consumer middleware. `handle` gets the delivery's context and the rest of the stack; it
/// calls `next.run(ctx)` (zero, one or several times) and returns an outcome, its own or the
/// inner one changed.
#[async_trait]
pub trait Layer: Send + Sync {
    /// A short name, by which [`Stack`] finds it (`retry`, `dead-letter`, …).
    fn name(&self) -> &str;

    /// Handles one delivery.
    async fn handle(&self, ctx: &mut Context, next: Next<'_>) -> Outcome;

    /// Whether, as configured, this layer would only pass every delivery on unchanged (a
    /// timeout layer without a timeout, say). Such a layer stays in the [`Stack`] (its name can
    /// be found and edited) but the consumer leaves it out of the chain it runs, which spares
    /// each event its boxed future. `false` unless a layer says otherwise.
    fn passes_through(&self) -> bool {
        false
    }
}

/// The innermost step: decode and dispatch to receivers (typed), or call a raw receiver. An
/// enum rather than a trait object, so that its future sits inside the layers' futures instead
/// of taking an allocation of its own per event.
pub(crate) enum Handler {
    Typed(super::dispatch::Dispatcher),
    Raw(super::dispatch::RawDispatcher),
}

impl Handler {
    async fn handle(&self, ctx: &mut Context) -> Outcome {
        match self {
            Handler::Typed(dispatcher) => dispatcher.handle(ctx).await,
            Handler::Raw(dispatcher) => dispatcher.handle(ctx).await,
        }
    }
}

/// The rest of the stack below a layer. Copy it to run the inner layers again (a retry).
#[derive(Clone, Copy)]
pub struct Next<'a> {
    layers: &'a [Arc<dyn Layer>],
    handler: &'a Handler,
}

impl<'a> Next<'a> {
    pub(crate) fn new(layers: &'a [Arc<dyn Layer>], handler: &'a Handler) -> Self {
        Self { layers, handler }
    }

    /// Runs the inner layers and the receivers.
    pub async fn run(self, ctx: &mut Context) -> Outcome {
        match self.layers.split_first() {
            Some((layer, inner)) => {
                layer
                    .handle(
                        ctx,
                        Next {
                            layers: inner,
                            handler: self.handler,
                        },
                    )
                    .await
            }
            None => self.handler.handle(ctx).await,
        }
    }
}

/// What a built-in layer wraps: the rest of the stack ([`Next`], a chain of trait objects) or,
/// where the consumer runs the default layers as one future, the next built-in layer itself.
/// Each built-in is written once, generic over this.
pub(crate) trait Inner: Copy + Send + Sync {
    /// Runs what is wrapped, once; a copy runs it again (a retry).
    fn run(self, ctx: &mut Context) -> impl Future<Output = Outcome> + Send;
}

impl Inner for Next<'_> {
    fn run(self, ctx: &mut Context) -> impl Future<Output = Outcome> + Send {
        Next::run(self, ctx)
    }
}

/// A built-in layer's policy, generic over what it wraps; its [`Layer::handle`] passes [`Next`].
pub(crate) trait Wrap: Send + Sync {
    /// Handles one delivery around `inner`.
    fn wrap<I: Inner>(&self, ctx: &mut Context, inner: I) -> impl Future<Output = Outcome> + Send;
}

/// `layer` around `inner`, itself something a layer can wrap: how the default layers nest as
/// one future, on the consumer ([`Wrap`] around [`Inner`]) and on the producer
/// (`PublishWrap` around `PublishInner`).
pub(crate) struct Then<'l, L, I>(pub(crate) &'l L, pub(crate) I);

impl<L, I: Copy> Clone for Then<'_, L, I> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<L, I: Copy> Copy for Then<'_, L, I> {}

impl<L: Wrap, I: Inner> Inner for Then<'_, L, I> {
    fn run(self, ctx: &mut Context) -> impl Future<Output = Outcome> + Send {
        self.0.wrap(ctx, self.1)
    }
}

/// `layers` with the run `ours` (the very layers, not layers of the same names) replaced by
/// `fused`, where they stand next to each other in their order.
pub(crate) fn fuse_run<L: ?Sized>(
    mut layers: Vec<Arc<L>>,
    ours: &[Arc<L>],
    fused: impl FnOnce() -> Arc<L>,
) -> Vec<Arc<L>> {
    let found = layers
        .windows(ours.len())
        .position(|run| run.iter().zip(ours).all(|(a, b)| Arc::ptr_eq(a, b)));
    if let Some(at) = found {
        layers.splice(at..at + ours.len(), [fused()]);
    }
    layers
}

impl fmt::Debug for Next<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<&str> = self.layers.iter().map(|l| l.name()).collect();
        f.debug_struct("Next").field("layers", &names).finish()
    }
}

/// Something a [`Stack`] holds: a consumer [`Layer`] or a producer
/// [`PublishLayer`](crate::producer::PublishLayer).
pub trait Named: Send + Sync {
    /// The layer's name.
    fn layer_name(&self) -> &str;
}

impl Named for dyn Layer {
    fn layer_name(&self) -> &str {
        self.name()
    }
}

/// An ordered list of layers, outermost first. The consumer's default:
/// `tracing, metrics, error-limit, dead-letter, retry, timeout`; the producer's:
/// `tracing, metrics`.
pub struct Stack<L: ?Sized> {
    layers: Vec<Arc<L>>,
}

/// The layers of a consumer.
pub type ConsumerStack = Stack<dyn Layer>;

impl<L: ?Sized + Named> Stack<L> {
    /// An empty stack.
    pub fn new() -> Self {
        Self { layers: Vec::new() }
    }

    /// The layer names, outermost first.
    pub fn names(&self) -> Vec<&str> {
        self.layers.iter().map(|l| l.layer_name()).collect()
    }

    /// Adds `layer` innermost, closest to the receivers.
    pub fn push(&mut self, layer: Arc<L>) -> &mut Self {
        self.layers.push(layer);
        self
    }

    /// Adds `layer` outermost.
    pub fn push_outer(&mut self, layer: Arc<L>) -> &mut Self {
        self.layers.insert(0, layer);
        self
    }

    /// Inserts `layer` just outside the layer named `name`.
    pub fn insert_before(&mut self, name: &str, layer: Arc<L>) -> Result<&mut Self> {
        let at = self.index(name)?;
        self.layers.insert(at, layer);
        Ok(self)
    }

    /// Inserts `layer` just inside the layer named `name`.
    pub fn insert_after(&mut self, name: &str, layer: Arc<L>) -> Result<&mut Self> {
        let at = self.index(name)?;
        self.layers.insert(at + 1, layer);
        Ok(self)
    }

    /// Replaces the layer named `name`.
    pub fn replace(&mut self, name: &str, layer: Arc<L>) -> Result<&mut Self> {
        let at = self.index(name)?;
        self.layers[at] = layer;
        Ok(self)
    }

    /// Removes the layer named `name`; returns whether there was one.
    pub fn remove(&mut self, name: &str) -> bool {
        let before = self.layers.len();
        self.layers.retain(|l| l.layer_name() != name);
        self.layers.len() != before
    }

    /// Removes every layer.
    pub fn clear(&mut self) -> &mut Self {
        self.layers.clear();
        self
    }

    pub(crate) fn into_layers(self) -> Arc<[Arc<L>]> {
        self.layers.into()
    }

    fn index(&self, name: &str) -> Result<usize> {
        self.layers
            .iter()
            .position(|l| l.layer_name() == name)
            .ok_or_else(|| {
                Error::new(ErrorKind::Config, "no layer of this name in the stack")
                    .with("layer", name)
                    .with("stack", self.names().join(", "))
            })
    }
}

impl<L: ?Sized + Named> Default for Stack<L> {
    fn default() -> Self {
        Self::new()
    }
}

impl<L: ?Sized> Clone for Stack<L> {
    fn clone(&self) -> Self {
        Self {
            layers: self.layers.clone(),
        }
    }
}

impl<L: ?Sized + Named> fmt::Debug for Stack<L> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.names()).finish()
    }
}
