pub mod codec;
pub mod tracker;
