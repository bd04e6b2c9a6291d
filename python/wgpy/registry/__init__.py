"""Many gateways, one peer registry: peers synced from etcd (docs/registry.md).

A gateway subscribes to a network in etcd (`wgpy --registry
etcd://HOST:PORT/NETWORK IFACE`, or `Device(..., registry=...)`); its
private key and listen port stay local. The registry holds public data
only. The modules, one concept each:

- `layout`: the keys and values in etcd, and their validation;
- `config`: etcd URLs, TLS and authentication options;
- `etcd`: the etcd v3 client (JSON gateway over httpx, on Trio);
- `view`: the registry's decision for each entry, from its keys alone;
- `gateway`: ownership, and decisions turned into `wgpy.changes` changes;
- `sync`: snapshot, watch, reconnect and reload, on a running device;
- `report`: the status in `get` replies and `wgpy show`;
- `admin` and `cli`: `wgpy registry`, writing with etcd transactions.

This package imports nothing by itself (wgpy.uapi.protocol reads `report`
without the rest); `sync`, `etcd`, `admin` and `cli` import the HTTP client.
"""
