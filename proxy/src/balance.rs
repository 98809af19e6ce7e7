//! Load-balancing policies. Pure and deterministic given their inputs (P2C takes its randomness
//! as an argument), so they are unit-tested here without sockets.
//!
//! Every policy sees backends through two functions: `weight(i)` (0 = not eligible; later also
//! health and slow start) and, for least-request, `score(i)`.

use std::sync::Mutex;

use xxhash_rust::xxh3::xxh3_64;

/// Smooth weighted round robin, nginx's algorithm (`ngx_http_upstream_get_peer`): each pick adds
/// every eligible backend's weight to its running total, takes the largest, and subtracts the sum
/// of weights from the winner. Over any window of `sum(weights)` picks each backend is chosen
/// exactly `weight` times, and the picks of a heavy backend are spread out, not bunched.
#[derive(Debug)]
pub struct SmoothWrr {
    current: Mutex<Vec<i64>>,
}

impl SmoothWrr {
    pub fn new(n: usize) -> Self {
        Self {
            current: Mutex::new(vec![0; n]),
        }
    }

    pub fn pick(&self, weight: impl Fn(usize) -> u32) -> Option<usize> {
        let mut current = self.current.lock().unwrap_or_else(|p| p.into_inner());
        let mut total = 0i64;
        let mut best: Option<usize> = None;
        for i in 0..current.len() {
            let w = i64::from(weight(i));
            if w == 0 {
                continue;
            }
            current[i] += w;
            total += w;
            if best.is_none_or(|b| current[i] > current[b]) {
                best = Some(i);
            }
        }
        let b = best?;
        current[b] -= total;
        Some(b)
    }
}

/// Least request by the power of two choices: draw two distinct eligible backends at random and
/// take the one with the lower score (`score(i)` is `None` for an ineligible backend). Two random
/// choices avoid the herd behaviour of always picking the global minimum, at O(1) cost.
pub fn p2c(n: usize, score: impl Fn(usize) -> Option<f64>, rng: &mut fastrand::Rng) -> Option<usize> {
    match n {
        0 => return None,
        1 => return score(0).map(|_| 0),
        _ => {}
    }
    let a = rng.usize(..n);
    let mut b = rng.usize(..n - 1);
    if b >= a {
        b += 1;
    }
    match (score(a), score(b)) {
        (Some(sa), Some(sb)) => Some(better(a, sa, b, sb, rng)),
        _ => {
            // Some backends are not eligible: choose among those that are.
            let eligible: Vec<(usize, f64)> = (0..n).filter_map(|i| score(i).map(|s| (i, s))).collect();
            match eligible.len() {
                0 => None,
                1 => Some(eligible[0].0),
                m => {
                    let x = rng.usize(..m);
                    let mut y = rng.usize(..m - 1);
                    if y >= x {
                        y += 1;
                    }
                    let ((a, sa), (b, sb)) = (eligible[x], eligible[y]);
                    Some(better(a, sa, b, sb, rng))
                }
            }
        }
    }
}

fn better(a: usize, sa: f64, b: usize, sb: f64, rng: &mut fastrand::Rng) -> usize {
    if sa < sb {
        a
    } else if sb < sa {
        b
    } else if rng.bool() {
        a
    } else {
        b
    }
}

/// Picks by weight at random: the fallback of the hash policy when a request has no key.
pub fn weighted_random(n: usize, weight: impl Fn(usize) -> u32, rng: &mut fastrand::Rng) -> Option<usize> {
    let total: u64 = (0..n).map(|i| u64::from(weight(i))).sum();
    if total == 0 {
        return None;
    }
    let mut x = rng.u64(..total);
    for i in 0..n {
        let w = u64::from(weight(i));
        if x < w {
            return Some(i);
        }
        x -= w;
    }
    None
}

/// Virtual nodes per backend at average weight. 160 is ketama's figure: enough that the keys of a
/// ring of a few backends split within a few percent of their weights.
const VNODES: usize = 160;

/// A consistent-hash ring (ketama-style). Points are placed by hashing each backend's identity
/// (its URL, not its position), so adding a backend to N takes about 1/(N+1) of the keys and
/// moves no key between the backends that stayed.
#[derive(Debug, Default)]
pub struct Ring {
    points: Vec<(u64, u32)>,
}

impl Ring {
    /// `backends[i]` is (identity, weight); weight 0 places no point.
    pub fn build<S: AsRef<str>>(backends: &[(S, u32)]) -> Self {
        let live = backends.iter().filter(|(_, w)| *w > 0).count();
        let sum: u64 = backends.iter().map(|(_, w)| u64::from(*w)).sum();
        let mut points = Vec::new();
        if sum == 0 {
            return Self { points };
        }
        for (i, (id, w)) in backends.iter().enumerate() {
            if *w == 0 {
                continue;
            }
            let count = ((VNODES * live) as u64 * u64::from(*w)).div_ceil(sum).max(1);
            for v in 0..count {
                let mut key = Vec::with_capacity(id.as_ref().len() + 8);
                key.extend_from_slice(id.as_ref().as_bytes());
                key.push(b'#');
                key.extend_from_slice(v.to_string().as_bytes());
                points.push((xxh3_64(&key), i as u32));
            }
        }
        points.sort_unstable();
        Self { points }
    }

    /// The first eligible backend clockwise from `hash`.
    pub fn pick(&self, hash: u64, eligible: impl Fn(usize) -> bool) -> Option<usize> {
        if self.points.is_empty() {
            return None;
        }
        let start = self.points.partition_point(|p| p.0 < hash);
        (0..self.points.len())
            .map(|k| self.points[(start + k) % self.points.len()].1 as usize)
            .find(|&i| eligible(i))
    }
}

/// The hash of a balancing key (header value, cookie value, client address).
#[inline]
pub fn hash_key(key: &[u8]) -> u64 {
    xxh3_64(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn swrr_follows_weights_exactly_and_interleaves() {
        let w = [5u32, 1, 1];
        let rr = SmoothWrr::new(3);
        let picks: Vec<usize> = (0..7).map(|_| rr.pick(|i| w[i]).unwrap()).collect();
        // nginx's documented sequence for weights 5,1,1: a a b a c a a.
        assert_eq!(picks, [0, 0, 1, 0, 2, 0, 0]);
        let mut counts = [0; 3];
        for _ in 0..7000 {
            counts[rr.pick(|i| w[i]).unwrap()] += 1;
        }
        assert_eq!(counts, [5000, 1000, 1000]);
    }

    #[test]
    fn swrr_skips_weight_zero_and_handles_none() {
        let w = [0u32, 2, 0];
        let rr = SmoothWrr::new(3);
        assert!((0..10).all(|_| rr.pick(|i| w[i]) == Some(1)));
        assert_eq!(rr.pick(|_| 0), None);
        assert_eq!(SmoothWrr::new(0).pick(|_| 1), None);
    }

    #[test]
    fn p2c_prefers_the_lower_score_and_never_an_ineligible_one() {
        let mut rng = fastrand::Rng::with_seed(7);
        let scores = [10.0, 1.0, 10.0, 10.0];
        let mut wins = [0; 4];
        for _ in 0..4000 {
            wins[p2c(4, |i| Some(scores[i]), &mut rng).unwrap()] += 1;
        }
        // Backend 1 wins every draw it is part of: 1 - (3/4 * 2/3) = 1/2 of draws.
        assert!((1800..2200).contains(&wins[1]), "{wins:?}");
        for _ in 0..1000 {
            let pick = p2c(4, |i| (i != 1 && i != 2).then_some(scores[i]), &mut rng).unwrap();
            assert!(pick == 0 || pick == 3);
        }
        assert_eq!(p2c(3, |_| None, &mut rng), None);
        assert_eq!(p2c(1, |_| Some(1.0), &mut rng), Some(0));
    }

    fn ring_of(n: usize) -> (Vec<String>, Ring) {
        let ids: Vec<String> = (0..n).map(|i| format!("http://10.0.0.{i}:80")).collect();
        let ring = Ring::build(&ids.iter().map(|s| (s.as_str(), 1)).collect::<Vec<_>>());
        (ids, ring)
    }

    #[test]
    fn ring_spreads_keys_and_adding_a_backend_moves_about_its_share() {
        let (ids4, r4) = ring_of(4);
        let (ids5, r5) = ring_of(5);
        let keys: Vec<u64> = (0..20_000)
            .map(|k| hash_key(format!("user-{k}").as_bytes()))
            .collect();
        let mut counts = [0; 4];
        let mut moved = 0;
        for &h in &keys {
            let a = r4.pick(h, |_| true).unwrap();
            let b = r5.pick(h, |_| true).unwrap();
            counts[a] += 1;
            if ids4[a] != ids5[b] {
                moved += 1;
                // A key that moves, moves to the new backend only.
                assert_eq!(b, 4);
            }
        }
        // 160 points per backend place each share within about +-8% (one sigma) of even.
        assert!(counts.iter().all(|&c| (3500..6500).contains(&c)), "{counts:?}");
        let share = moved as f64 / keys.len() as f64;
        assert!((0.15..0.25).contains(&share), "moved {share}");
    }

    #[test]
    fn ring_skips_ineligible_backends_and_weights_shift_share() {
        let (_, r) = ring_of(3);
        for k in 0..1000u64 {
            let h = hash_key(&k.to_le_bytes());
            assert_ne!(r.pick(h, |i| i != 1), Some(1));
        }
        assert_eq!(r.pick(1, |_| false), None);
        let heavy = Ring::build(&[("a", 3u32), ("b", 1)]);
        let a = (0..10_000u64)
            .filter(|k| heavy.pick(hash_key(&k.to_le_bytes()), |_| true) == Some(0))
            .count();
        assert!((6800..8200).contains(&a), "{a}");
        assert!(Ring::build(&[("a", 0u32)]).pick(5, |_| true).is_none());
    }

    #[test]
    fn weighted_random_follows_weights() {
        let mut rng = fastrand::Rng::with_seed(1);
        let w = [1u32, 0, 3];
        let mut c = [0; 3];
        for _ in 0..8000 {
            c[weighted_random(3, |i| w[i], &mut rng).unwrap()] += 1;
        }
        assert_eq!(c[1], 0);
        assert!((1700..2300).contains(&c[0]), "{c:?}");
        assert_eq!(weighted_random(2, |_| 0, &mut rng), None);
    }
}
