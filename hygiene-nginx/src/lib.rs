//! hygiene backend for nginx (work in progress: see the project issues).
