"""Where job inputs come from: safe network fetching and image decoding."""
