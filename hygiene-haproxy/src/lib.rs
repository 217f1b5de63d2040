//! hygiene backend for haproxy (work in progress: see the project issues).
