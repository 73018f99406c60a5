//! bench-affinity's workload: the conversations (seeded, the same for every strategy) and the request rate.

use std::sync::Arc;

use super::args::Args;

/// splitmix64: the workload is the same for every strategy.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
    fn exp(&mut self, mean: f64) -> f64 {
        -mean * (1.0 - self.unit()).ln()
    }
    fn range(&mut self, lo: usize, hi: usize) -> usize {
        lo + (self.next() % (hi - lo + 1) as u64) as usize
    }
}

/// One conversation's plan: when it starts, its user messages, the think time before each turn after the first.
pub struct Conversation {
    pub id: usize,
    pub start_ms: f64,
    pub users: Vec<String>,
    pub think_ms: Vec<f64>,
}

/// `tokens` tokens of text (4 bytes each) beginning with `tag`, so every message is distinct.
fn text(tag: &str, tokens: usize) -> String {
    let mut s = String::with_capacity(tokens * 4 + tag.len());
    s.push_str(tag);
    while s.len() < tokens * 4 {
        s.push_str("lor ");
    }
    s.truncate(tokens * 4);
    s
}

pub struct Plan {
    pub system: Arc<str>,
    pub conversations: Vec<Conversation>,
    /// Mean slot time (prefill) of a request when only the shared system prompt is cached (ms).
    pub mean_service_ms: f64,
    /// Requests per second that keeps the instances `busy` at that service time.
    pub rate: f64,
    /// Planned time of the median request from the first start (ms): "halfway".
    pub half_ms: f64,
}

pub fn plan(a: &Args) -> Plan {
    let mut rng = Rng(a.seed);
    let users: Vec<Vec<usize>> = (0..a.conversations)
        .map(|_| {
            (0..a.turns)
                .map(|_| rng.range(a.user_min, a.user_max))
                .collect()
        })
        .collect();
    // Service time without conversation hits: every token but the system prompt's is computed.
    let answer = a.answer_tokens as f64;
    let mut total = 0.0;
    for conv in &users {
        let mut uncached = 0.0;
        for (t, u) in conv.iter().enumerate() {
            uncached += *u as f64 + if t > 0 { answer } else { 0.0 };
            total += a.base_ms + a.token_ms * uncached;
        }
    }
    let requests = (a.conversations * a.turns) as f64;
    let mean_service_ms = total / requests;
    let rate = a.busy * (a.instances * a.slots) as f64 / (mean_service_ms / 1000.0);
    // Conversations arrive as a Poisson process at rate / turns: the request rate is `rate` once they overlap.
    let gap_ms = 1000.0 * a.turns as f64 / rate;
    let mut start = 0.0;
    let mut planned = Vec::with_capacity(a.conversations * a.turns);
    let conversations = users
        .into_iter()
        .enumerate()
        .map(|(id, tokens)| {
            if id > 0 {
                start += rng.exp(gap_ms);
            }
            let think_ms: Vec<f64> = (0..a.turns)
                .map(|t| if t == 0 { 0.0 } else { rng.exp(a.think_ms) })
                .collect();
            let mut at = start;
            for th in &think_ms {
                at += th;
                planned.push(at);
                at += mean_service_ms + a.decode_ms * answer;
            }
            let users = tokens
                .iter()
                .enumerate()
                .map(|(t, n)| text(&format!("c{id} t{t} "), *n))
                .collect();
            Conversation {
                id,
                start_ms: start,
                users,
                think_ms,
            }
        })
        .collect();
    planned.sort_by(f64::total_cmp);
    let half_ms = planned.get(planned.len() / 2).copied().unwrap_or(0.0);
    Plan {
        system: text("system ", a.system_tokens).into(),
        conversations,
        mean_service_ms,
        rate,
        half_ms,
    }
}
