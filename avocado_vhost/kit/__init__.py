"""
The conformance kit for back-end authors: real back-ends by name
(:mod:`.backends`), the suite's external scenarios against them
(``tests/functional/test_external.py``), and the hostile front-end
(:mod:`avocado_vhost.fuzz`).  See docs/conformance-kit.rst.
"""
