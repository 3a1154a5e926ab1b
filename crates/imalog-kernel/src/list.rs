//! A singly linked record list that readers walk without a lock while
//! records are appended, as the kernel's RCU list of queue entries.
//!
//! Each node's `next` pointer is set once, when the next record is appended
//! under the list mutex, and readers load it with one atomic read. Moving a
//! whole list (`A`, `D`) swaps the head pointer; cutting the first N records
//! (`N`) swaps the head to the node after the N-th. Both are O(1) under the
//! list mutex. The cut-off chain's last node still points into the live
//! list. Nothing follows that pointer: readers re-walk from the head after
//! any cut (see `files`), and dropping the chain stops at the first node
//! that is still shared.
//!
//! Nodes are reference counted, so a reader that still holds a node of a
//! cut-off chain keeps it alive, and the chain is freed when the last holder
//! drops it, iteratively so that a chain of millions of nodes cannot
//! overflow the stack. The head pointer sits behind its own small mutex,
//! taken only to read or swap it; readers never wait for the list mutex.

use std::sync::{Arc, Mutex, OnceLock};

/// One list node.
pub struct Node<T> {
    /// The record.
    pub entry: T,
    next: OnceLock<Arc<Node<T>>>,
}

impl<T> Node<T> {
    /// Creates a node with no successor.
    pub fn new(entry: T) -> Arc<Self> {
        Arc::new(Node { entry, next: OnceLock::new() })
    }

    /// The successor.
    pub fn next(&self) -> Option<Arc<Node<T>>> {
        self.next.get().cloned()
    }

    /// Links `next` after this node, which must be a tail: a node's
    /// successor never changes once set. Callers hold the list mutex.
    fn link(&self, next: Arc<Node<T>>) {
        // Only tails are linked, and a tail has no successor yet.
        let _ = self.next.set(next);
    }
}

impl<T> Drop for Node<T> {
    fn drop(&mut self) {
        // Unlink the successors one at a time, and stop at a node that is
        // still shared, such as the head of the live list after a cut.
        let mut next = self.next.take();
        while let Some(node) = next {
            match Arc::try_unwrap(node) {
                Ok(mut owned) => next = owned.next.take(),
                Err(_) => break,
            }
        }
    }
}

/// The reader's view of a list: its head.
pub struct Head<T> {
    head: Mutex<Option<Arc<Node<T>>>>,
}

impl<T> Default for Head<T> {
    fn default() -> Self {
        Head { head: Mutex::new(None) }
    }
}

impl<T> Head<T> {
    fn slot(&self) -> std::sync::MutexGuard<'_, Option<Arc<Node<T>>>> {
        // A panic cannot leave the slot half written: it is one pointer.
        self.head.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Returns the first node.
    pub fn first(&self) -> Option<Arc<Node<T>>> {
        self.slot().clone()
    }

    /// Replaces the first node and returns the old one. Callers hold the
    /// list mutex.
    pub fn replace(&self, node: Option<Arc<Node<T>>>) -> Option<Arc<Node<T>>> {
        std::mem::replace(&mut *self.slot(), node)
    }

    /// Iterates from the head, loading each `next` as it goes, so records
    /// appended during the walk may or may not be seen, as with RCU.
    pub fn iter(&self) -> NodeIter<T> {
        NodeIter { next: self.first() }
    }
}

/// Iterator over nodes, starting anywhere.
pub struct NodeIter<T> {
    next: Option<Arc<Node<T>>>,
}

impl<T> NodeIter<T> {
    /// Iterates from `node` on.
    pub fn from(node: Option<Arc<Node<T>>>) -> Self {
        NodeIter { next: node }
    }
}

impl<T> Iterator for NodeIter<T> {
    type Item = Arc<Node<T>>;

    fn next(&mut self) -> Option<Arc<Node<T>>> {
        let node = self.next.take()?;
        self.next = node.next();
        Some(node)
    }
}

/// The mutex-side state of a list: its tail and length.
pub struct Tail<T> {
    /// The last node.
    pub last: Option<Arc<Node<T>>>,
    /// Number of nodes.
    pub len: u64,
}

impl<T> Default for Tail<T> {
    fn default() -> Self {
        Tail { last: None, len: 0 }
    }
}

impl<T> Tail<T> {
    /// Appends a node; the caller holds the list mutex and passes the head.
    pub fn append(&mut self, head: &Head<T>, node: Arc<Node<T>>) {
        match &self.last {
            Some(last) => last.link(Arc::clone(&node)),
            None => {
                head.replace(Some(Arc::clone(&node)));
            }
        }
        self.last = Some(node);
        self.len += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn build(count: u64) -> (Head<u64>, Tail<u64>) {
        let head = Head::default();
        let mut tail = Tail::default();
        for i in 0..count {
            tail.append(&head, Node::new(i));
        }
        (head, tail)
    }

    #[test]
    fn append_and_iterate() {
        let (head, tail) = build(5);
        let values: Vec<u64> = head.iter().map(|n| n.entry).collect();
        assert_eq!(values, vec![0, 1, 2, 3, 4]);
        assert_eq!(tail.len, 5);
    }

    #[test]
    fn long_chain_drops_without_recursion() {
        let (head, mut tail) = build(2_000_000);
        tail.last = None;
        drop(head.replace(None));
    }

    #[test]
    fn cut_keeps_live_part() {
        let (head, _tail) = build(10);
        let third = head.iter().nth(2).unwrap();
        let old = head.replace(third.next());
        drop(third);
        drop(old);
        let values: Vec<u64> = head.iter().map(|n| n.entry).collect();
        assert_eq!(values, vec![3, 4, 5, 6, 7, 8, 9]);
    }
}
