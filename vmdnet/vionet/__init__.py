"""The vionet device process: one virtio-net device per VM interface, over vhost-user."""
