//! The `Crdt` trait: state-based CRDTs whose merge is a join (least upper bound).
//!
//! Laws every implementation keeps, checked by proptest beside each type with
//! [`laws::check`]:
//! - commutative: `a ⊔ b == b ⊔ a`
//! - associative: `(a ⊔ b) ⊔ c == a ⊔ (b ⊔ c)`
//! - idempotent: `a ⊔ a == a`
//!
//! Because of them, gossip may lose, repeat and reorder anything: every node that has merged the
//! same set of states holds the same value. `merge` returns whether `self` changed so that callers
//! decide whether to persist, gossip or reconcile.

/// A state-based CRDT. `merge` must be commutative, associative and idempotent.
pub trait Crdt {
    /// Merges `other` into `self`; returns true if `self` changed.
    fn merge(&mut self, other: &Self) -> bool;
}

/// Helpers for property tests of the merge laws.
pub mod laws {
    use super::Crdt;

    /// Checks commutativity, associativity, idempotence, and that `merge`'s return value tells
    /// the truth, for three values. Returns a description of the first law broken.
    pub fn check<T: Crdt + Clone + PartialEq + std::fmt::Debug>(
        a: &T,
        b: &T,
        c: &T,
    ) -> Result<(), String> {
        let join = |x: &T, y: &T| {
            let mut z = x.clone();
            let changed = z.merge(y);
            (z, changed)
        };
        let (ab, ab_changed) = join(a, b);
        let (ba, _) = join(b, a);
        if ab != ba {
            return Err(format!("not commutative:\n a⊔b = {ab:?}\n b⊔a = {ba:?}"));
        }
        if ab_changed != (&ab != a) {
            return Err(format!(
                "merge returned {ab_changed} but the value {} change",
                if &ab != a { "did" } else { "did not" }
            ));
        }
        let (ab_c, _) = join(&ab, c);
        let (bc, _) = join(b, c);
        let (a_bc, _) = join(a, &bc);
        if ab_c != a_bc {
            return Err(format!(
                "not associative:\n (a⊔b)⊔c = {ab_c:?}\n a⊔(b⊔c) = {a_bc:?}"
            ));
        }
        let (aa, aa_changed) = join(a, a);
        if &aa != a || aa_changed {
            return Err(format!("not idempotent: a⊔a = {aa:?}, a = {a:?}"));
        }
        Ok(())
    }
}
