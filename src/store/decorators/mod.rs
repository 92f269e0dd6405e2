//! Stores that wrap any store for one cross-cutting concern: a tenant's view, timing and
//! slow-operation warnings, change signals, encryption at rest.

pub mod encrypted;
pub mod metered;
pub mod notifying;
pub mod tenant;
