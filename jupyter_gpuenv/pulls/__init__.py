"""Image pulls: ``progress`` (a pull's events added up, its failures as sentences, one pull per image for every
caller, the journal that reports a pull a restart cut short), ``registry`` (an image's size, for the disk check)."""
