//! The recorded history and its checks: per-primitive linearizability
//! against a sequential model, with unknown outcomes left in flight
//! (possibly applied, possibly not).

use std::fmt;
use std::time::Instant;

use std::collections::HashSet;

/// A client's thread of operations: (client index, generation). A client
/// whose operation ends with an unknown outcome continues as a new
/// generation, since that operation stays in flight forever.
pub type ThreadId = (usize, u32);

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    /// Latch join or election enter by this client.
    Join(String),
    Withdraw(String),
    Anoint(String),
    Promote(String),
    Evict(String),
    Read,
    /// The client's session closed: it leaves every primitive.
    Close(String),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Ret {
    State { members: Vec<String>, epoch: u64 },
    NotCandidate,
    Closed,
}

/// The sequential specification of one latch or election.
#[derive(Clone, Debug, Default)]
pub struct Spec {
    members: Vec<String>,
    epoch: u64,
}

impl Spec {
    fn set(&mut self, members: Vec<String>) {
        if members.first() != self.members.first() && !members.is_empty() {
            self.epoch += 1;
        }
        self.members = members;
    }

    fn state(&self) -> Ret {
        Ret::State {
            members: self.members.clone(),
            epoch: self.epoch,
        }
    }
}

impl Spec {
    /// Whether `op` may answer `ret` in this state; if so, applies it.
    pub fn is_valid_step(&mut self, op: &Op, ret: &Ret) -> bool {
        self.invoke(op) == *ret
    }

    /// Applies `op` and returns its answer.
    pub fn invoke(&mut self, op: &Op) -> Ret {
        let mut members = self.members.clone();
        let position = |c: &String, members: &[String]| members.iter().position(|m| m == c);
        match op {
            Op::Join(c) => {
                if !members.contains(c) {
                    members.push(c.clone());
                }
            }
            Op::Withdraw(c) => members.retain(|m| m != c),
            Op::Anoint(c) => match position(c, &members) {
                Some(i) => {
                    let m = members.remove(i);
                    members.insert(0, m);
                }
                None => return Ret::NotCandidate,
            },
            Op::Promote(c) => match position(c, &members) {
                Some(i) if i > 0 => members.swap(i - 1, i),
                Some(_) => {}
                None => return Ret::NotCandidate,
            },
            Op::Evict(c) => match position(c, &members) {
                Some(i) => {
                    members.remove(i);
                }
                None => return Ret::NotCandidate,
            },
            Op::Read => return self.state(),
            Op::Close(c) => {
                members.retain(|m| m != c);
                self.set(members);
                return Ret::Closed;
            }
        }
        self.set(members);
        self.state()
    }
}

/// One recorded operation on one primitive.
#[derive(Clone, Debug)]
pub struct Record {
    pub thread: ThreadId,
    pub op: Op,
    pub invoked: Instant,
    /// None: the outcome is unknown (timeout / UNAVAILABLE mid-call).
    pub completed: Option<(Instant, Ret)>,
}

impl fmt::Display for Record {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.completed {
            Some((done, ret)) => write!(
                f,
                "client {:?} {:?} -> {:?} ({} ms)",
                self.thread,
                self.op,
                ret,
                done.duration_since(self.invoked).as_millis()
            ),
            None => write!(f, "client {:?} {:?} -> unknown", self.thread, self.op),
        }
    }
}

/// Wing & Gong's search with Lowe's memoization (as in porcupine): walk
/// the invocation/return entries in time order, linearizing a pending
/// operation when the model accepts its result, and backtracking at a
/// return whose operation could not be placed. States already reached with
/// the same set of linearized operations are not explored twice. An
/// operation with an unknown outcome has its return at the end of time: it
/// may be linearized anywhere after its invocation, or never.
fn linearizable(records: &[Record]) -> bool {
    #[derive(Clone, Copy)]
    struct Entry {
        op: usize,
        is_return: bool,
        prev: usize,
        next: usize,
    }
    let n = records.len();
    let mut order: Vec<(Option<Instant>, bool, usize)> = Vec::with_capacity(2 * n);
    for (i, r) in records.iter().enumerate() {
        order.push((Some(r.invoked), false, i));
        order.push((r.completed.as_ref().map(|(t, _)| *t), true, i));
    }
    // None (unknown) sorts after every time; at equal times calls go first.
    order.sort_by_key(|(t, is_return, i)| (t.is_none(), *t, *is_return, *i));
    // A doubly linked list with a head sentinel at index 0.
    let mut list: Vec<Entry> = Vec::with_capacity(order.len() + 1);
    list.push(Entry {
        op: usize::MAX,
        is_return: false,
        prev: 0,
        next: 1,
    });
    let mut call_at = vec![0; n];
    let mut return_at = vec![0; n];
    for (k, (_, is_return, op)) in order.iter().enumerate() {
        let at = k + 1;
        list.push(Entry {
            op: *op,
            is_return: *is_return,
            prev: k,
            next: at + 1,
        });
        if *is_return {
            return_at[*op] = at;
        } else {
            call_at[*op] = at;
        }
    }
    let end = list.len();
    let lift = |list: &mut Vec<Entry>, op: usize| {
        for at in [call_at[op], return_at[op]] {
            let Entry { prev, next, .. } = list[at];
            list[prev].next = next;
            if next < end {
                list[next].prev = prev;
            }
        }
    };
    let unlift = |list: &mut Vec<Entry>, op: usize| {
        for at in [return_at[op], call_at[op]] {
            let Entry { prev, next, .. } = list[at];
            list[prev].next = at;
            if next < end {
                list[next].prev = at;
            }
        }
    };
    let words = n.div_ceil(64).max(1);
    let mut linearized = vec![0u64; words];
    let mut state = Spec::default();
    let mut seen: HashSet<(Vec<u64>, Vec<String>, u64)> = HashSet::new();
    let mut stack: Vec<(usize, Spec)> = Vec::new();
    let mut at = list[0].next;
    while at < end {
        let entry = list[at];
        if !entry.is_return {
            let record = &records[entry.op];
            let mut next_state = state.clone();
            let accepted = match &record.completed {
                Some((_, ret)) => next_state.is_valid_step(&record.op, ret),
                None => {
                    next_state.invoke(&record.op);
                    true
                }
            };
            if accepted {
                let mut marked = linearized.clone();
                marked[entry.op / 64] |= 1 << (entry.op % 64);
                if seen.insert((marked.clone(), next_state.members.clone(), next_state.epoch)) {
                    stack.push((entry.op, std::mem::replace(&mut state, next_state)));
                    linearized = marked;
                    lift(&mut list, entry.op);
                    at = list[0].next;
                    continue;
                }
            }
            at = entry.next;
        } else if records[entry.op].completed.is_none() {
            // Only unknown outcomes remain unplaced: they need not have happened.
            return true;
        } else {
            let Some((op, previous)) = stack.pop() else {
                return false;
            };
            state = previous;
            linearized[op / 64] &= !(1 << (op % 64));
            unlift(&mut list, op);
            at = list[call_at[op]].next;
        }
    }
    true
}

/// Checks one primitive's history; on a violation returns the shortest
/// failing prefix's last operations as an excerpt.
pub fn check_linearizable(records: &[Record]) -> Result<(), String> {
    let mut sorted = records.to_vec();
    sorted.sort_by_key(|r| r.invoked);
    let run = |history: Vec<Record>| {
        // The search recurses once per operation: give it room.
        std::thread::Builder::new()
            .stack_size(256 << 20)
            .spawn(move || linearizable(&history))
            .expect("spawn checker")
            .join()
            .expect("checker thread")
    };
    if run(sorted.clone()) {
        return Ok(());
    }
    // Shortest non-linearizable prefix (by invocation), for a small excerpt.
    let (mut good, mut bad) = (0, sorted.len());
    while bad - good > 1 {
        let mid = (good + bad) / 2;
        if run(sorted[..mid].to_vec()) {
            good = mid;
        } else {
            bad = mid;
        }
    }
    let start = bad.saturating_sub(20);
    let excerpt: Vec<String> = sorted[start..bad]
        .iter()
        .map(|r| format!("    {r}"))
        .collect();
    Err(format!(
        "not linearizable; the first {bad} operations already are not. Last of them:\n{}",
        excerpt.join("\n")
    ))
}
