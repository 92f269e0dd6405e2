//! The service layer: what every way into the stores (gRPC, the CLI's restore and
//! migrations) checks and decides before a write, without any transport type. The gRPC
//! layer converts proto types and maps [`ValidationError`] to INVALID_ARGUMENT.

pub mod chat_rules;
pub mod import;
pub mod policy;
pub mod sessions;
pub mod validate;
pub mod watch;

pub use policy::Policy;
pub use validate::ValidationError;
