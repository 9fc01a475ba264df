//! R4 `ConceptMapEquivalence`: the one table of equivalence codes that ConceptMaps, mapping sets
//! and the medication maps share.

use serde::de::{self, Deserialize, Deserializer, Unexpected, Visitor};
use std::fmt;

/// The codes of [`Equivalence`], in R4's order, as one text for messages (a macro so that fixes
/// can `concat!` it).
macro_rules! equivalence_codes {
    () => {
        "relatedto, equivalent, equal, wider, subsumes, narrower, specializes, inexact, unmatched, \
         disjoint"
    };
}
pub(super) use equivalence_codes;

/// R4 `ConceptMapEquivalence`, read from target to source (`wider`: the target is broader).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Equivalence {
    RelatedTo,
    Equivalent,
    Equal,
    Wider,
    Subsumes,
    Narrower,
    Specializes,
    Inexact,
    Unmatched,
    Disjoint,
}

impl Equivalence {
    /// Every equivalence, in R4's order.
    pub(crate) const ALL: [Equivalence; 10] = [
        Self::RelatedTo,
        Self::Equivalent,
        Self::Equal,
        Self::Wider,
        Self::Subsumes,
        Self::Narrower,
        Self::Specializes,
        Self::Inexact,
        Self::Unmatched,
        Self::Disjoint,
    ];

    pub(crate) fn code(self) -> &'static str {
        match self {
            Self::RelatedTo => "relatedto",
            Self::Equivalent => "equivalent",
            Self::Equal => "equal",
            Self::Wider => "wider",
            Self::Subsumes => "subsumes",
            Self::Narrower => "narrower",
            Self::Specializes => "specializes",
            Self::Inexact => "inexact",
            Self::Unmatched => "unmatched",
            Self::Disjoint => "disjoint",
        }
    }

    pub(crate) fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|e| e.code() == s)
    }

    /// Order of preference when one source code has several targets in one system.
    pub(crate) fn rank(self) -> u8 {
        match self {
            Self::Equal => 0,
            Self::Equivalent => 1,
            Self::Wider => 2,
            Self::Subsumes => 3,
            Self::Narrower => 4,
            Self::Specializes => 5,
            Self::Inexact => 6,
            Self::RelatedTo => 7,
            Self::Unmatched => 8,
            Self::Disjoint => 9,
        }
    }

    /// `unmatched` and `disjoint` state that there is no translation.
    pub(crate) fn is_translation(self) -> bool {
        !matches!(self, Self::Unmatched | Self::Disjoint)
    }

    /// R4 invariant cmd-1: a `narrower` or `inexact` target needs a comment.
    pub(crate) fn needs_comment(self) -> bool {
        matches!(self, Self::Narrower | Self::Inexact)
    }
}

/// Reads one of the codes of [`Equivalence::ALL`]; anything else is an invalid value.
impl<'de> Deserialize<'de> for Equivalence {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Code;
        impl Visitor<'_> for Code {
            type Value = Equivalence;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an R4 ConceptMapEquivalence")
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<Equivalence, E> {
                Equivalence::parse(s).ok_or_else(|| E::invalid_value(Unexpected::Str(s), &self))
            }
        }
        deserializer.deserialize_str(Code)
    }
}

/// An equivalence a mapping set accepts: one that states a translation.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Accepted(pub(crate) Equivalence);

impl<'de> Deserialize<'de> for Accepted {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let equivalence = Equivalence::deserialize(deserializer)?;
        if !equivalence.is_translation() {
            return Err(de::Error::invalid_value(
                Unexpected::Str(equivalence.code()),
                &"an equivalence that states a translation (unmatched and disjoint say there is none)",
            ));
        }
        Ok(Accepted(equivalence))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_codes_text_lists_every_equivalence_in_order() {
        let codes: Vec<&str> = Equivalence::ALL.iter().map(|e| e.code()).collect();
        assert_eq!(equivalence_codes!(), codes.join(", "));
        for e in Equivalence::ALL {
            assert_eq!(Equivalence::parse(e.code()), Some(e));
        }
        assert_eq!(Equivalence::parse("Equal"), None);
    }

    #[test]
    fn rank_orders_closest_first() {
        let mut all = Equivalence::ALL;
        all.sort_by_key(|e| e.rank());
        assert_eq!(all[0], Equivalence::Equal);
        assert_eq!(all[9], Equivalence::Disjoint);
        assert!(all.iter().filter(|e| !e.is_translation()).count() == 2);
    }
}
