pub mod codec;
pub mod tracker;
pub mod manifest;
pub mod ticket;
pub mod peer;
