"""The cross-platform userspace API (UAPI): how `wg` configures and reads wgpy.

`protocol` is the protocol without I/O (framing, validation, replies);
`server` serves it on the interface's socket.
"""
