//! Which partitions a canary runs (`[canary]`): pure, so the same plan, estimates and seed
//! always give the same choice.
//!
//! The choice, in order, without repeats: the first partition, the last, the largest by the
//! source's row count (when counts are given), then partitions drawn at random from `seed`
//! (SplitMix64, a fixed, documented generator: the choice does not change with a library
//! version). Fewer partitions than asked when the plan has fewer.

use std::collections::BTreeSet;
use std::fmt;

/// Why a partition is in the canary.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Why {
    /// The plan's first partition.
    First,
    /// The plan's last partition.
    Last,
    /// The most rows by the source's count.
    Largest,
    /// Drawn from the seed.
    Random,
}

impl fmt::Display for Why {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Why::First => "first",
            Why::Last => "last",
            Why::Largest => "largest",
            Why::Random => "random",
        })
    }
}

/// One chosen partition: its plan index and why.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pick {
    /// Position in the plan, from 0.
    pub index: usize,
    /// Why it was chosen.
    pub why: Why,
}

/// Chooses `wanted` of `count` partitions (see the module doc). `rows` holds the source's row
/// count per plan index where known (empty when the source cannot count).
pub fn choose(count: usize, wanted: usize, rows: &[Option<u64>], seed: u64) -> Vec<Pick> {
    let wanted = wanted.min(count);
    let mut picks: Vec<Pick> = Vec::with_capacity(wanted);
    let mut taken = BTreeSet::new();
    let take = |picks: &mut Vec<Pick>, taken: &mut BTreeSet<usize>, index: usize, why: Why| {
        if picks.len() < wanted && taken.insert(index) {
            picks.push(Pick { index, why });
        }
    };
    if count == 0 {
        return picks;
    }
    take(&mut picks, &mut taken, 0, Why::First);
    take(&mut picks, &mut taken, count - 1, Why::Last);
    let largest = rows
        .iter()
        .enumerate()
        .take(count)
        .filter_map(|(i, r)| r.map(|r| (r, i)))
        // The most rows; on a tie the earliest partition.
        .max_by_key(|(r, i)| (*r, std::cmp::Reverse(*i)));
    if let Some((_, index)) = largest {
        take(&mut picks, &mut taken, index, Why::Largest);
    }
    let mut rng = SplitMix64(seed);
    let left = wanted - picks.len();
    if left > 0 && left * 2 > count - picks.len() {
        // Most of what is left: shuffle the rest instead of drawing until enough are new.
        let mut rest: Vec<usize> = (0..count).filter(|i| !taken.contains(i)).collect();
        for i in 0..left {
            let j = i + rng.below(rest.len() - i);
            rest.swap(i, j);
            take(&mut picks, &mut taken, rest[i], Why::Random);
        }
    } else {
        while picks.len() < wanted {
            let index = rng.below(count);
            take(&mut picks, &mut taken, index, Why::Random);
        }
    }
    picks
}

/// SplitMix64 (Steele, Lea, Flood 2014): small, fast, and fixed here so a seed keeps its choice.
struct SplitMix64(u64);

impl SplitMix64 {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number in `0..n` (`n > 0`); the modulo bias is below 2^-40 for any plan size.
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn show(picks: &[Pick]) -> String {
        picks
            .iter()
            .map(|p| format!("{}:{}", p.index, p.why))
            .collect::<Vec<_>>()
            .join(" ")
    }

    #[test]
    fn first_last_largest_then_seeded_random() {
        let rows = [Some(5), Some(90), Some(7), None, Some(90), Some(1)];
        let picks = choose(6, 4, &rows, 42);
        assert_eq!(
            picks[..3],
            [
                Pick {
                    index: 0,
                    why: Why::First
                },
                Pick {
                    index: 5,
                    why: Why::Last
                },
                Pick {
                    index: 1,
                    why: Why::Largest
                },
            ]
        );
        assert_eq!(picks[3].why, Why::Random);
        assert_eq!(
            show(&picks),
            show(&choose(6, 4, &rows, 42)),
            "same seed, same choice"
        );
    }

    #[test]
    fn never_repeats_and_never_more_than_the_plan() {
        for count in 0..12 {
            for wanted in 0..15 {
                for seed in 0..5 {
                    let picks = choose(count, wanted, &[], seed);
                    assert_eq!(picks.len(), wanted.min(count));
                    let set: BTreeSet<usize> = picks.iter().map(|p| p.index).collect();
                    assert_eq!(set.len(), picks.len());
                    assert!(set.iter().all(|i| *i < count));
                }
            }
        }
    }

    #[test]
    fn seeds_differ() {
        let a = show(&choose(1000, 6, &[], 1));
        let b = show(&choose(1000, 6, &[], 2));
        assert_ne!(a, b);
        assert_eq!(show(&choose(1, 3, &[], 9)), "0:first");
    }
}
