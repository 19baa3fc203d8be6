"""
A real Linux guest for the suite: Debian's kernel and its virtio-net
driver, booted under TCG from an initramfs made of busybox.

``assets``      Debian's current packages, and the kernel + initramfs
                made from them (cached outside the clone)
``initramfs``   a newc cpio writer (the host has no cpio)
``console``     the guest's serial console: every byte logged, pattern
                waits, commands with their exit status
``netstack``    the back-end's side of the wire: ARP and ICMP echo
"""
