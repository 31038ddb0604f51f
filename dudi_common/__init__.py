"""What every component shares without depending on another one: today, Ray gauges that keep their last value."""
