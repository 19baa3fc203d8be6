"""The runners that can drive the suite's tests: Avocado
(:mod:`.avocado_test`) and Python's unittest with TAP output, as QEMU's own
functional-test runner (meson + TAP) does (:mod:`.unittest_test`,
:mod:`.tap`), and the Avocado plugins (:mod:`.avocado_plugin`: the
result files; :mod:`.avocado_settings`: the suite's settings).
:mod:`avocado_vhost.test` picks one."""
