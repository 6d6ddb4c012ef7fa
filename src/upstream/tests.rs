//! Tests of the upstream client over real sockets on 127.0.0.1.
