# Builds a golden image from a local base disk with Packer's qemu builder and
# finalizes it with vmfinal in a shell-local post-processor.
#
#   packer build -var base_image=/path/base.raw golden.pkr.hcl                    # vmfinal installed (.deb), as root
#   packer build -var base_image=/path/base.raw -var 'vmfinal=sudo vmfinal' golden.pkr.hcl
#   packer build -var base_image=/path/base.raw -var vmfinal=$PWD/target/release/vmfinal \
#     -var post_process=$PWD/scripts/packer-post-process.sh examples/packer/golden.pkr.hcl   # from a clone
#
# The qemu builder copies the base image, boots it (provisioners would run
# here; this example has none: the guest powers itself off once it reached
# multi-user, so no SSH credentials are needed), and leaves the disk in
# output_directory. skip_compaction and disk_compression=false keep Packer
# from running `qemu-img convert -c` itself: vmfinal compacts once, after the
# cleanup, instead of compressing twice. vmfinal needs root (loop devices).

variable "base_image" {
  type        = string
  description = "Local base disk image (raw)"
}
variable "disk_size" {
  type    = string
  default = "3072M"
}
variable "accelerator" {
  type        = string
  default     = "tcg"
  description = "kvm where it works; tcg on hosts whose nested KVM hangs guests"
}
variable "output_dir" {
  type    = string
  default = "output-golden"
}
variable "vmfinal" {
  type        = string
  default     = "vmfinal"
  description = "The vmfinal command; may carry arguments, e.g. \"sudo vmfinal\" when Packer does not run as root"
}
variable "post_process" {
  type        = string
  default     = "vmfinal-packer-post-process"
  description = "The wrapper shell-local runs: on PATH once the .deb is installed; from a clone, its absolute path (scripts/packer-post-process.sh)"
}
variable "vmfinal_args" {
  type    = string
  default = "--profiles defaults --compression zstd"
}

source "qemu" "golden" {
  disk_image        = true
  iso_url           = var.base_image
  iso_checksum      = "none"
  use_backing_file  = false
  format            = "raw"
  disk_size         = var.disk_size
  disk_interface    = "virtio"
  accelerator       = var.accelerator
  headless          = true
  communicator      = "none"
  shutdown_timeout  = "15m"
  skip_compaction   = true
  disk_compression  = false
  output_directory  = var.output_dir
  vm_name           = "disk.raw"
  memory            = 1024
  cpus              = 2
  qemuargs          = [["-serial", "file:${var.output_dir}-serial.log"]]
}

build {
  sources = ["source.qemu.golden"]

  # shell-local passes no artifact path, only PACKER_BUILD_NAME,
  # PACKER_BUILDER_TYPE and the variables below: the wrapper takes the
  # image from VMFINAL_IMAGE.
  post-processor "shell-local" {
    environment_vars = [
      "VMFINAL=${var.vmfinal}",
      "VMFINAL_IMAGE=${var.output_dir}/disk.raw",
      "VMFINAL_OUTPUT=${var.output_dir}/golden.qcow2",
      "VMFINAL_MANIFEST=${var.output_dir}/manifest.json",
      "VMFINAL_ARGS=${var.vmfinal_args}",
    ]
    inline = ["${var.post_process}"]
  }
}
