package zran

// baseLayerHex names the 51 MB base layer of ../shared/images/debian-python,
// the benchmark input when that folder is present.
const baseLayerHex = "62739f7ffb64722a994c479cccf85ed328ff2fe06f7184602f5d993daf7b6bb9"
