//! What a finished request cost: its tokens (counted off the request path when the backend reported none),
//! its price, its key's budget settled, the cost metric, and the record's cost and estimate flag.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::auth::KeyInfo;
use crate::endpoints::ApiKind;
use crate::estimate::{self, Estimator};
use crate::metrics::Metrics;
use crate::money::Usd;
use crate::pricing::{Price, Prices};
use crate::ratelimit::{Limiter, Reservation};
use crate::tap::text::Generated;
use crate::tokens::TokenUsage;

/// Output tokens reserved for a request that sets no cap of its own.
pub const DEFAULT_RESERVED_OUTPUT: u64 = 4096;
/// Estimates waiting for the worker, at most, in jobs and in the bytes they hold.
const ESTIMATE_QUEUE_JOBS: usize = 4096;
const ESTIMATE_QUEUE_BYTES: usize = 64 << 20;
/// Longest wait for a count a caller asked for (`count_tokens`) before it is answered with a rough one (the
/// first count after a start also builds the tokenizer: seconds in a debug build on a busy machine).
pub const COUNT_WAIT: Duration = Duration::from_secs(10);

/// The services a request's accounts need: the limiter (budgets, token windows), the metrics, and the
/// worker that counts tokens (started on first use, so after Pingora's daemon fork).
pub struct Accountant {
    limiter: Arc<Limiter>,
    metrics: Arc<Metrics>,
    estimator: OnceLock<Estimator>,
}

/// What a request leaves for its accounts when it ends, borrowed from the request: nothing is copied unless
/// its tokens must be counted on the worker.
pub struct Bill<'a> {
    pub kind: ApiKind,
    /// The price table of the config the request ran under.
    pub prices: &'a Arc<Prices>,
    /// The model the backend named in its answer, the model sent upstream, the requested model: the first
    /// with a price prices the request.
    pub answered_model: Option<&'a str>,
    pub sent_model: Option<&'a str>,
    pub requested_model: &'a str,
    /// The metrics' labels.
    pub model_label: &'a str,
    pub backend: Option<&'a str>,
    pub key: Option<&'a Arc<KeyInfo>>,
    pub reservation: Option<Reservation>,
    /// What the backend reported.
    pub reported: Option<TokenUsage>,
}

/// A bill that outlives its request: what the worker needs once it has counted the tokens.
struct OwnedBill {
    kind: ApiKind,
    prices: Arc<Prices>,
    answered_model: Option<String>,
    sent_model: Option<String>,
    requested_model: String,
    model_label: String,
    backend: Option<String>,
    key: Option<Arc<KeyInfo>>,
    reservation: Option<Reservation>,
}

impl OwnedBill {
    fn new(bill: Bill<'_>) -> OwnedBill {
        OwnedBill {
            kind: bill.kind,
            prices: Arc::clone(bill.prices),
            answered_model: bill.answered_model.map(str::to_owned),
            sent_model: bill.sent_model.map(str::to_owned),
            requested_model: bill.requested_model.to_owned(),
            model_label: bill.model_label.to_owned(),
            backend: bill.backend.map(str::to_owned),
            key: bill.key.cloned(),
            reservation: bill.reservation,
        }
    }

    fn bill(&mut self) -> Bill<'_> {
        Bill {
            kind: self.kind,
            prices: &self.prices,
            answered_model: self.answered_model.as_deref(),
            sent_model: self.sent_model.as_deref(),
            requested_model: &self.requested_model,
            model_label: &self.model_label,
            backend: self.backend.as_deref(),
            key: self.key.as_ref(),
            reservation: self.reservation.take(),
            reported: None,
        }
    }
}

/// The texts to count tokens of, when the backend reported no usage.
pub struct ToCount {
    /// The request body as received.
    pub request: Bytes,
    /// What the backend generated before the answer ended (none: nothing, or not readable).
    pub generated: Option<Generated>,
}

/// A request's accounts: its tokens, whether the gateway counted them, and its cost.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Settled {
    pub tokens: TokenUsage,
    pub estimated: bool,
    /// `None`: no price for the request's models.
    pub cost_usd: Option<f64>,
}

impl Accountant {
    pub fn new(limiter: Arc<Limiter>, metrics: Arc<Metrics>) -> Accountant {
        Accountant {
            limiter,
            metrics,
            estimator: OnceLock::new(),
        }
    }

    #[cfg(test)]
    pub fn limiter(&self) -> &Arc<Limiter> {
        &self.limiter
    }

    /// Settles `bill` and hands the result to `then` (which sends the record): at once when there is nothing
    /// to `count`, else on the estimator's thread once it counted the tokens.
    pub fn settle<F>(self: &Arc<Self>, bill: Bill<'_>, count: Option<ToCount>, then: F)
    where
        F: FnOnce(Settled) + Send + 'static,
    {
        let Some(count) = count else {
            return then(self.close(bill, None));
        };
        let bytes = count.request.len() + count.generated.as_ref().map_or(0, |g| g.bytes.len());
        let mut owned = OwnedBill::new(bill);
        let me = Arc::clone(self);
        let rough = Arc::new(AtomicBool::new(false));
        let roughly = Arc::clone(&rough);
        let job = Box::new(move || {
            let bill = owned.bill();
            let counted = match roughly.load(Ordering::Relaxed) {
                true => rough_count(&count),
                false => count_tokens(&bill, &count),
            };
            then(me.close(bill, Some(counted)));
        });
        let estimator = self
            .estimator
            .get_or_init(|| Estimator::start(ESTIMATE_QUEUE_JOBS, ESTIMATE_QUEUE_BYTES));
        if let Err(job) = estimator.submit(bytes, job) {
            // The worker is behind (or stopping): a rough count here, rather than the record or the budget
            // being lost, or a tokenizer on the request thread.
            log::warn!("token estimate queue full: counted roughly");
            rough.store(true, Ordering::Relaxed);
            job();
        }
    }

    /// The prompt tokens of a chat completions request `body` for `model` (OpenAI's tokenizers: an estimate for
    /// other vendors' models), counted on the estimator's thread; a rough count (bytes / 4) when its queue is
    /// full or it does not answer within [`COUNT_WAIT`].
    pub async fn count_prompt(&self, body: Bytes, model: &str, prices: &Prices) -> i64 {
        let configured = prices.first([model]).and_then(|p| p.tokenizer);
        let tok = estimate::tokenizer_for(model, configured);
        let len = body.len();
        let (tx, rx) = tokio::sync::oneshot::channel();
        let job = Box::new(move || {
            let counted = estimate::prompt_tokens(ApiKind::Chat, &body, tok)
                .unwrap_or_else(|| estimate::rough_tokens(body.len()));
            // The caller may have stopped waiting.
            let _ = tx.send(counted);
        });
        let estimator = self
            .estimator
            .get_or_init(|| Estimator::start(ESTIMATE_QUEUE_JOBS, ESTIMATE_QUEUE_BYTES));
        if estimator.submit(len, job).is_err() {
            return estimate::rough_tokens(len);
        }
        match tokio::time::timeout(COUNT_WAIT, rx).await {
            Ok(Ok(counted)) => counted,
            _ => estimate::rough_tokens(len),
        }
    }

    /// Runs the estimates still queued, for at most `deadline` (at shutdown, before the usage writer's last
    /// drain); returns how many were dropped.
    pub fn drain(&self, deadline: Duration) -> usize {
        self.estimator.get().map_or(0, |e| e.close(deadline))
    }

    /// Prices the request with its reported (or `counted`) tokens, settles its reservation or adds its spend,
    /// and counts its cost in the metrics.
    fn close(&self, bill: Bill<'_>, counted: Option<TokenUsage>) -> Settled {
        let estimated = counted.is_some();
        let tokens = counted.or(bill.reported).unwrap_or_default();
        // Counting a prompt's tokens is free, whatever the count.
        let priced = bill.kind != ApiKind::CountTokens;
        let cost_usd = price_of(&bill).filter(|_| priced).map(|p| cost(p, &tokens));
        let cost = Usd::from_f64(cost_usd.unwrap_or(0.0));
        match (bill.reservation, bill.key) {
            (Some(reservation), _) => reservation.settle(cost),
            (None, Some(key)) => self.limiter.spend(key, cost),
            (None, None) => {}
        }
        if let Some(usd) = cost_usd.filter(|&usd| usd > 0.0) {
            self.metrics.add_cost(bill.model_label, bill.backend, usd);
        }
        if estimated {
            self.metrics
                .add_tokens(bill.model_label, bill.backend, &tokens);
        }
        if let (true, Some(key)) = (estimated, bill.key) {
            let total = tokens.prompt.unwrap_or(0) + tokens.completion.unwrap_or(0);
            if let Ok(total @ 1..) = u64::try_from(total) {
                self.limiter.add_tokens(key, total, Instant::now());
            }
        }
        Settled {
            tokens,
            estimated,
            cost_usd,
        }
    }
}

/// The price of the first of the bill's models that has one (each name looked up once).
fn price_of<'a>(bill: &Bill<'a>) -> Option<&'a Price> {
    let requested = Some(bill.requested_model);
    let sent = bill.sent_model.filter(|&s| Some(s) != bill.answered_model);
    let requested = requested.filter(|&r| Some(r) != bill.answered_model && Some(r) != sent);
    let prices: &'a Prices = bill.prices;
    prices.first([bill.answered_model, sent, requested].into_iter().flatten())
}

/// The cost of `tokens`; a request without any count (it failed before a backend answered) costs nothing,
/// not even its `per_request` price.
pub fn cost(price: &Price, tokens: &TokenUsage) -> f64 {
    if tokens.prompt.is_none() && tokens.completion.is_none() && tokens.total.is_none() {
        return 0.0;
    }
    price.cost(tokens)
}

/// What a request of `body_len` bytes capped at `max_tokens` output tokens most likely costs at most:
/// prompt tokens estimated from its size (a token per 3 bytes, more than any tokenizer counts for JSON),
/// plus its output cap, or [`DEFAULT_RESERVED_OUTPUT`].
pub fn reservation(price: Option<&Price>, body_len: usize, max_tokens: Option<u64>) -> Usd {
    let Some(price) = price else {
        return Usd::ZERO;
    };
    let output = max_tokens.unwrap_or(DEFAULT_RESERVED_OUTPUT);
    let tokens = TokenUsage {
        prompt: Some(i64::try_from(body_len.div_ceil(3)).unwrap_or(i64::MAX)),
        completion: Some(i64::try_from(output).unwrap_or(i64::MAX)),
        ..TokenUsage::default()
    };
    Usd::from_f64(price.cost(&tokens))
}

/// Counts the prompt and the generated text with a real tokenizer (on the estimator's thread).
fn count_tokens(bill: &Bill<'_>, count: &ToCount) -> TokenUsage {
    let configured = price_of(bill).and_then(|p| p.tokenizer);
    let model = bill.sent_model.unwrap_or(bill.requested_model);
    let tok = estimate::tokenizer_for(model, configured);
    let prompt = estimate::prompt_tokens(bill.kind, &count.request, tok)
        .unwrap_or_else(|| estimate::rough_tokens(count.request.len()));
    let completion = count.generated.as_ref().map_or(0, |g| {
        let (text, scale) = g.texts(bill.kind);
        // The whole answer's text, in bytes: what was kept, scaled as the stream was.
        let whole = (text.len() as f64 * scale).round() as usize;
        estimate::completion_tokens(&text, whole, tok)
    });
    TokenUsage {
        prompt: Some(prompt),
        completion: Some(completion),
        total: Some(prompt + completion),
        ..TokenUsage::default()
    }
}

/// A count without a tokenizer, when the worker is full: 4 bytes a token for the prompt, a token per stream
/// event (or 4 bytes of a body) for the answer.
fn rough_count(count: &ToCount) -> TokenUsage {
    let prompt = estimate::rough_tokens(count.request.len());
    let completion = count.generated.as_ref().map_or(0, |g| match g.sse {
        true => {
            let events = memchr::memmem::find_iter(&g.bytes, b"data:").count() as f64;
            (events * g.total as f64 / g.bytes.len().max(1) as f64).round() as i64
        }
        false => estimate::rough_tokens(g.bytes.len()),
    });
    TokenUsage {
        prompt: Some(prompt),
        completion: Some(completion),
        total: Some(prompt + completion),
        ..TokenUsage::default()
    }
}

#[cfg(test)]
mod tests;
