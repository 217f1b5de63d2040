//! The fault kinds, and the seeded draw of the faults of each rollout.

use std::fmt;

use serde::Serialize;

/// A fault the soak injects into a rollout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FaultKind {
    /// The rollout process killed with SIGKILL at a random journal record,
    /// then `resume`d.
    Sigkill,
    /// SIGINT to the rollout process at a random journal record.
    Sigint,
    /// One node or both reloaded (`-sf`, listeners passed with `-x`) during
    /// a maintenance: the runtime DRAIN is forgotten.
    Reload,
    /// One node killed (SIGKILL) when a drain starts and started again
    /// (socket gone, then back with fresh runtime state).
    NodeRestart,
    /// The maintenance fails (exit 1, the service stays stopped).
    Fail,
    /// The maintenance exits 0 but leaves the service answering 500 to
    /// everything: its health never returns.
    Broken,
    /// The maintenance hangs past its time limit (killed, service stopped).
    Hang,
    /// Long requests (seconds) in flight on every server when drains start.
    LongRequests,
    /// The server under maintenance removed from both nodes' configuration
    /// by a reload (put back by a reload after the rollout).
    ServerRemoved,
}

impl FaultKind {
    /// Every kind.
    pub const ALL: [Self; 9] = [
        Self::Sigkill,
        Self::Sigint,
        Self::Reload,
        Self::NodeRestart,
        Self::Fail,
        Self::Broken,
        Self::Hang,
        Self::LongRequests,
        Self::ServerRemoved,
    ];

    /// The name used in the JSON figures.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Sigkill => "sigkill",
            Self::Sigint => "sigint",
            Self::Reload => "reload",
            Self::NodeRestart => "node_restart",
            Self::Fail => "fail",
            Self::Broken => "broken",
            Self::Hang => "hang",
            Self::LongRequests => "long_requests",
            Self::ServerRemoved => "server_removed",
        }
    }

    /// Two kinds that do not go into one rollout: both end the rollout
    /// process early.
    fn conflicts(self, other: Self) -> bool {
        matches!(
            (self, other),
            (Self::Sigkill, Self::Sigint) | (Self::Sigint, Self::Sigkill)
        )
    }
}

impl fmt::Display for FaultKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// SplitMix64: a seeded generator whose sequence depends on nothing but
/// the seed (no crate version can change a replay).
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator from a seed.
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `lo..=hi` (`lo` when `hi < lo`).
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        if hi <= lo {
            return lo;
        }
        lo + self.next_u64() % (hi - lo + 1)
    }

    /// Uniform index below `n` (0 when `n` is 0).
    pub fn index(&mut self, n: usize) -> usize {
        self.range(0, n.saturating_sub(1) as u64) as usize
    }

    /// True with probability `num / den`.
    pub fn chance(&mut self, num: u64, den: u64) -> bool {
        self.range(1, den) <= num
    }

    /// Shuffles `v` in place (Fisher–Yates).
    pub fn shuffle<T>(&mut self, v: &mut [T]) {
        for i in (1..v.len()).rev() {
            let j = self.index(i + 1);
            v.swap(i, j);
        }
    }
}

/// Draws the fault kinds of successive rollouts: the first kind of each
/// rollout walks through every kind in a seeded order (so a short run
/// covers them all), the others are drawn at random.
#[derive(Debug, Clone)]
pub struct FaultDraw {
    cycle: Vec<FaultKind>,
    max_per_rollout: usize,
}

impl FaultDraw {
    /// Up to `max_per_rollout` kinds per rollout (at least one).
    pub fn new(max_per_rollout: usize) -> Self {
        Self {
            cycle: Vec::new(),
            max_per_rollout: max_per_rollout.max(1),
        }
    }

    /// The kinds of the next rollout, distinct and compatible.
    pub fn next(&mut self, rng: &mut Rng) -> Vec<FaultKind> {
        if self.cycle.is_empty() {
            self.cycle = FaultKind::ALL.to_vec();
            rng.shuffle(&mut self.cycle);
        }
        let first = self.cycle.remove(0);
        let mut kinds = vec![first];
        let n = rng.range(1, self.max_per_rollout as u64) as usize;
        while kinds.len() < n {
            let k = FaultKind::ALL[rng.index(FaultKind::ALL.len())];
            if kinds.iter().all(|&o| o != k && !o.conflicts(k)) {
                kinds.push(k);
            } else if kinds.len() + 1 >= FaultKind::ALL.len() {
                break;
            } else {
                // Redraw: bounded, since most pairs are compatible.
                if rng.chance(1, 4) {
                    break;
                }
            }
        }
        kinds.sort();
        kinds
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_seed_draws_the_same_faults() {
        let draw = |seed| {
            let mut rng = Rng::new(seed);
            let mut d = FaultDraw::new(3);
            (0..20).map(|_| d.next(&mut rng)).collect::<Vec<_>>()
        };
        assert_eq!(draw(7), draw(7));
        assert_ne!(draw(7), draw(8));
    }

    #[test]
    fn nine_rollouts_cover_every_kind_and_never_pair_conflicts() {
        let mut rng = Rng::new(7);
        let mut d = FaultDraw::new(3);
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..FaultKind::ALL.len() {
            let kinds = d.next(&mut rng);
            assert!(
                !(kinds.contains(&FaultKind::Sigkill) && kinds.contains(&FaultKind::Sigint)),
                "{kinds:?}"
            );
            seen.extend(kinds);
        }
        assert_eq!(seen.len(), FaultKind::ALL.len());
    }
}
