"""
What every test process needs, whichever runner runs it: private short
temp dirs that a dead process cannot leak for long (:mod:`.tmpdirs`), a
watchdog that cleans up after a killed one (:mod:`.watchdog`), and the
clock of where its time goes (:mod:`.phases`).
"""
