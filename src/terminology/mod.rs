//! Terminology from `fhir-profiles/`: the ConceptMaps between the sectors' code systems and the
//! per-target mapping sets ([`mapping`]), and drug codes to ATC ingredients and route families
//! ([`medication`]). Loaded once at start-up; lookups are pure.

pub mod mapping;
pub mod medication;

pub use mapping::{CodeReport, Mapping, MappingError};
pub use medication::MedKnowledge;
