//! End-to-end tests: the real `capstan` binary, real TCP backends and clients on loopback.

mod balance;
mod files;
mod lifecycle;
mod reload;
mod support;
mod udp;
