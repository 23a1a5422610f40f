//! Static arena planning: every activation buffer gets a fixed offset, reused once its last reader has run.

use kiln_runtime::format::ARENA_ALIGN;

/// One buffer to place: `size` bytes, live from step `first` to step `last` inclusive.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Buffer {
    pub size: usize,
    pub first: usize,
    pub last: usize,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    /// Offset of each buffer, in input order.
    pub offsets: Vec<usize>,
    /// Arena bytes the plan needs.
    pub total: usize,
    /// No plan can use less: the most bytes live at any one step.
    pub lower_bound: usize,
}

fn align(n: usize) -> usize {
    n.div_ceil(ARENA_ALIGN) * ARENA_ALIGN
}

fn overlap_in_time(a: &Buffer, b: &Buffer) -> bool {
    a.first <= b.last && b.first <= a.last
}

/// Greedy by size: the largest buffers are placed first, each at the lowest aligned offset where it collides with
/// no already-placed buffer that is live at the same time.
pub fn plan(buffers: &[Buffer]) -> Plan {
    let mut order: Vec<usize> = (0..buffers.len()).collect();
    order.sort_by_key(|&i| (std::cmp::Reverse(buffers[i].size), buffers[i].first, i));
    let mut offsets = vec![0usize; buffers.len()];
    let mut placed: Vec<usize> = Vec::new();
    let mut total = 0;
    for &i in &order {
        let b = &buffers[i];
        let size = align(b.size);
        // Candidate offsets: 0 and the end of every conflicting buffer; take the lowest that fits.
        let mut conflicts: Vec<(usize, usize)> = placed
            .iter()
            .filter(|&&j| overlap_in_time(b, &buffers[j]))
            .map(|&j| (offsets[j], offsets[j] + align(buffers[j].size)))
            .collect();
        conflicts.sort_unstable();
        let mut offset = 0;
        for &(start, end) in &conflicts {
            if offset + size <= start {
                break;
            }
            offset = offset.max(end);
        }
        offsets[i] = offset;
        total = total.max(offset + size);
        placed.push(i);
    }
    let horizon = buffers.iter().map(|b| b.last + 1).max().unwrap_or(0);
    let lower_bound = (0..horizon)
        .map(|t| {
            buffers
                .iter()
                .filter(|b| b.first <= t && t <= b.last)
                .map(|b| align(b.size))
                .sum::<usize>()
        })
        .max()
        .unwrap_or(0);
    Plan {
        offsets,
        total,
        lower_bound,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check_valid(buffers: &[Buffer], p: &Plan) {
        for i in 0..buffers.len() {
            for j in i + 1..buffers.len() {
                if overlap_in_time(&buffers[i], &buffers[j]) {
                    let (a, b) = (p.offsets[i], p.offsets[j]);
                    let disjoint = a + buffers[i].size <= b || b + buffers[j].size <= a;
                    assert!(
                        disjoint,
                        "buffers {i} and {j} are live together and overlap: {p:?}"
                    );
                }
            }
        }
        assert!(p.total >= p.lower_bound);
    }

    #[test]
    fn chain_reuses_memory() {
        // x -> a -> b -> c: only two neighbours are ever live together.
        let bufs = [
            Buffer {
                size: 100,
                first: 0,
                last: 1,
            },
            Buffer {
                size: 100,
                first: 1,
                last: 2,
            },
            Buffer {
                size: 100,
                first: 2,
                last: 3,
            },
            Buffer {
                size: 100,
                first: 3,
                last: 4,
            },
        ];
        let p = plan(&bufs);
        check_valid(&bufs, &p);
        assert_eq!(p.total, 200);
        assert_eq!(p.lower_bound, 200);
    }

    #[test]
    fn random_plans_are_valid() {
        let mut s = 12345u32;
        let mut next = |m: u32| {
            s = s.wrapping_mul(1664525).wrapping_add(1013904223);
            (s >> 8) % m
        };
        for _ in 0..200 {
            let n = 1 + next(12) as usize;
            let bufs: Vec<Buffer> = (0..n)
                .map(|_| {
                    let first = next(10) as usize;
                    Buffer {
                        size: 1 + next(300) as usize,
                        first,
                        last: first + next(5) as usize,
                    }
                })
                .collect();
            check_valid(&bufs, &plan(&bufs));
        }
    }
}
