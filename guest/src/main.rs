//! brig-init: pid 1 of every brig microVM.
fn main() {}
