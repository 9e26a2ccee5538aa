//! The control plane's loops: controllers and the scheduler, API clients under leader election.

pub mod controllers;
pub mod identity;
pub mod roles;
pub mod scheduler;
