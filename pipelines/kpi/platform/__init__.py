"""The platform itself: the umbrella chart rendered with its real upstream subcharts (``chart``), and the
local platform that runs the platform's own programs as processes configured from that render (``local``)."""
