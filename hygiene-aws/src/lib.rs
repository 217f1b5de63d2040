//! hygiene backend for aws (work in progress: see the project issues).
