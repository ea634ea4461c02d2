//! OCI images: references, registry client, content-addressed store, unpacking, rootfs images.
