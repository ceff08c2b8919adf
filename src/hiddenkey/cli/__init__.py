"""The ``hiddenkey`` application: the command-line tool built on the library.

* :mod:`.main`            argument dispatch (``hiddenkey train``, ``hiddenkey eval``)
* :mod:`.arguments`       the argument dataclasses and their parsing
* :mod:`.runs`            the run folder: every file the tool writes is named and written there
* :mod:`.models`          loading the pretrained model, tokenizer and LoRA config
* :mod:`.classification`  NLU training and evaluation
* :mod:`.generation`      NLG training, generation and evaluation
* :mod:`.decoding`        prompt format, decoding settings, generation and scoring for NLG
* :mod:`.plots`           figures

The library (``hiddenkey.config``, ``ops``, ``attention``, ``hidden``, ``attach``, ``losses``,
``trainer``) never imports anything from here.
"""
