//! Terminology from `fhir-profiles/`: the ConceptMaps between the sectors' code systems and the
//! per-target mapping sets ([`mapping`]), and drug codes to ATC ingredients and route families
//! ([`medication`]). Loaded once at start-up; lookups are pure.
//!
//! Both read their ConceptMaps with one reader (`conceptmap`), into `serde` types (`de`: a bad
//! file's error names the file, the JSON path, the reason and the fix), with one table of
//! equivalences (`equivalence`); `files` finds and strictly parses the files.

mod conceptmap;
pub mod conditions;
mod de;
mod equivalence;
mod files;
pub mod mapping;
pub mod medication;

pub use mapping::{CodeReport, Mapping, MappingError};
pub use medication::MedKnowledge;
