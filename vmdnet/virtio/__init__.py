"""The virtio spec as data: feature bits, virtio_net_hdr, split virtqueue layout. No I/O."""
