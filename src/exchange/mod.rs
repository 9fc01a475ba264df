//! Exchange inside the core: what runs in the accepting transaction and what the delivery
//! worker asks of the store, without any HTTP.
//!
//! - [`route`]: which accepted versions go where; writes the outbox in the accepting
//!   transaction; the types pulled from a sector.
//! - [`resolve`]: what a reference points at across sectors.
//! - [`map`]: one stored version mapped for one target (profile, codes through
//!   [`crate::terminology`], references, the source-resource identifier).
//!
//! The workers that send and poll (`workers`) sit above the core and use these.

pub mod map;
pub mod resolve;
pub mod route;

pub use crate::fhir::SOURCE_ID_SYSTEM;
