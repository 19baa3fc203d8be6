"""
External vhost-user back-ends, the conformance kit's subjects: the real
back-ends known by name (:mod:`.backends`) and how a test starts one and
judges it (:mod:`.launch`); the scenarios are
``tests/kit/test_external.py``, the hostile front-end is
:mod:`avocado_vhost.fuzz`.  See docs/conformance-kit.rst.
"""
